"""The "basic setup" contender: the whole graph in one process behind one gRPC endpoint.

Validation, the Feast read, onnxruntime and the label policy run in process, with the very code the graph's
services run, behind the same GatewayService API, so `make bench` shows what the graph's hops cost and buy.

    python -m services.bench.monolith      # SCOREGRAPH_MONOLITH_PORT (50091 by default)
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.features.codec import request_from_proto
from services.features.keys import DEV_CARD_KEY
from services.features.online import FeatureStatus, OnlineFeatures, open_online_features
from services.features.settings import FeaturesSettings
from services.gateway.assessment import Assessment
from services.gateway.codec import decode_label, encode_score_response
from services.gateway.translate import translate_transaction
from services.gateway.validation import CreatedAtWindow, validate_score_request
from services.postprocess.codec import response_from_decision
from services.postprocess.policy import FeatureSummary, ModelVersion, PolicyCatalogue, ScoringOutcome
from services.postprocess.settings import PostprocessSettings
from services.predict.contract import INPUT_TENSOR, OUTPUT_TENSOR
from services.predict.onnx_export import read_serving_model
from services.predict.repository import CPU_REPOSITORY
from services.runtime.logging import configure_logging
from services.runtime.server import ServiceRegistration, run
from services.runtime.settings import ServiceSettings

MODEL = ModelVersion("fraud_mlp", "1")


class MonolithSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_MONOLITH_")

    port: int = Field(default=50091, ge=0, lt=65536)
    """Port of the monolith's GatewayService."""
    metrics_port: int = Field(default=0, ge=0, lt=65536)
    """No metrics endpoint by default: the contender is measured from outside."""


class MonolithScorer:
    def __init__(self, features: OnlineFeatures, policies: PolicyCatalogue) -> None:
        model_path = CPU_REPOSITORY / MODEL.name / MODEL.version / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._contract = read_serving_model(onnx.load(model_path)).contract
        self._features = features
        self._policies = policies
        self._window = CreatedAtWindow(300.0, 7 * 24 * 3600.0)

    def score(self, request: gateway_pb2.ScoreRequest) -> gateway_pb2.ScoreResponse:
        validate_score_request(request, now=time.time(), window=self._window)
        tx = request.transaction
        vector = self._features.read(
            request_from_proto(translate_transaction(tx, DEV_CARD_KEY, self._contract.feature_service))
        )
        row = np.asarray([vector.values], dtype=np.float32)
        (scores,) = self._session.run([OUTPUT_TENSOR], {INPUT_TENSOR: row})
        score = float(scores[0, 0])
        by_status = {
            status: tuple(n for n, s in zip(vector.names, vector.statuses, strict=True) if s is status)
            for status in FeatureStatus
        }
        summary = FeatureSummary(
            len(by_status[FeatureStatus.PRESENT]),
            by_status[FeatureStatus.MISSING],
            by_status[FeatureStatus.STALE],
        )
        decision = self._policies.decide(ScoringOutcome(MODEL, score, summary))
        verdict, reasons = decode_label(response_from_decision(decision))
        return encode_score_response(
            Assessment(
                tx.transaction_id,
                verdict,
                score,
                MODEL.name,
                MODEL.version,
                reasons,
                bool(summary.stale),
                trace_id="",
            )
        )


class MonolithServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, scorer: MonolithScorer) -> None:
        self._scorer = scorer

    async def Score(self, request, context: grpc.aio.ServicerContext) -> gateway_pb2.ScoreResponse:  # noqa: N802
        return self._scorer.score(request)


def main() -> None:
    settings = MonolithSettings()
    configure_logging(settings.log_level, service="monolith")
    postprocess = PostprocessSettings()
    scorer = MonolithScorer(
        open_online_features(FeaturesSettings()),
        PolicyCatalogue.load(postprocess.policy_dir, postprocess.fallback_policy),
    )
    registration = ServiceRegistration(
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
        MonolithServicer(scorer),
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
    )
    asyncio.run(run(settings, [registration]))


if __name__ == "__main__":
    main()
