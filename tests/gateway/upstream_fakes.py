"""Features, postprocess and predict stand-ins whose answers each test scripts, and which record their calls.

Fakes rather than the real services: these tests are about the gateway's graph logic (ordering, degradation,
deadlines, error mapping), which the real services cannot be made to misbehave for on cue.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from scoregraph.features.v1 import features_pb2, features_pb2_grpc
from scoregraph.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc

from services.predict.client import PredictError, PredictResult, ServedModel
from services.predict.contract import FeatureContract
from services.runtime.errors import FieldViolation, InvalidInput, to_status

FEATURE_SERVICE = "fraud_v1"
FEATURE_NAMES = ("amount_eur", "txn_count_1h", "card_age_days")
SERVED_MODEL = ServedModel("fraud_mlp", "3", FeatureContract(FEATURE_SERVICE, FEATURE_NAMES))

PRESENT = features_pb2.FEATURE_STATUS_PRESENT
MISSING = features_pb2.FEATURE_STATUS_MISSING
STALE = features_pb2.FEATURE_STATUS_STALE


@dataclass
class Call:
    request: Any
    metadata: dict[str, str]
    timeout_s: float | None


Answer = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def features_answer(
    names: tuple[str, ...] = FEATURE_NAMES,
    values: tuple[float, ...] = (12.34, 2.0, 400.0),
    statuses: tuple[int, ...] = (PRESENT, PRESENT, PRESENT),
) -> Answer:
    async def answer(request, context):
        return features_pb2.GetFeaturesResponse(
            feature_service=request.feature_service,
            feature_names=names,
            values=values,
            statuses=statuses,
            ages_ms=[-1 if status == MISSING else 0 for status in statuses],
            event_time=request.request_values.event_time,
        )

    return answer


def label_answer(label: int = postprocess_pb2.LABEL_SUSPICIOUS, *reasons: tuple[str, str]) -> Answer:
    async def answer(request, context):
        return postprocess_pb2.LabelResponse(
            label=label,
            reasons=[postprocess_pb2.Reason(code=code, description=text) for code, text in reasons],
            policy_version="test",
        )

    return answer


def failing(code: grpc.StatusCode) -> Answer:
    async def answer(request, context):
        await context.abort(code, f"scripted {code.name}")

    return answer


def refusing(*violations: FieldViolation) -> Answer:
    """INVALID_ARGUMENT naming fields of the hop's request, as the real services send it."""

    async def answer(request, context):
        status = to_status(InvalidInput(list(violations)))
        await context.abort(status.code, status.details, status.trailing_metadata)

    return answer


def slow(seconds: float, then: Answer) -> Answer:
    async def answer(request, context):
        await asyncio.sleep(seconds)
        return await then(request, context)

    return answer


def _record(calls: list[Call], request: Any, context: grpc.aio.ServicerContext) -> None:
    calls.append(Call(request, dict(context.invocation_metadata()), context.time_remaining()))


@dataclass
class ScriptedFeatures(features_pb2_grpc.FeaturesServiceServicer):
    answer: Answer = field(default_factory=features_answer)
    calls: list[Call] = field(default_factory=list)

    async def GetFeatures(self, request, context):
        _record(self.calls, request, context)
        return await self.answer(request, context)


@dataclass
class ScriptedPostprocess(postprocess_pb2_grpc.PostprocessServiceServicer):
    answer: Answer = field(default_factory=lambda: label_answer(postprocess_pb2.LABEL_SUSPICIOUS))
    calls: list[Call] = field(default_factory=list)

    async def Label(self, request, context):
        _record(self.calls, request, context)
        return await self.answer(request, context)


PredictAnswer = Callable[[np.ndarray], Awaitable[PredictResult]]


def scores(score: float) -> PredictAnswer:
    async def answer(features: np.ndarray) -> PredictResult:
        return PredictResult(
            np.full(len(features), score, dtype=np.float32), SERVED_MODEL.name, SERVED_MODEL.version
        )

    return answer


def raising(error: PredictError) -> PredictAnswer:
    async def answer(features: np.ndarray) -> PredictResult:
        raise error

    return answer


@dataclass
class ScriptedPredictor:
    """Stands in for TritonReplicas."""

    answer: PredictAnswer = field(default_factory=lambda: scores(0.625))
    calls: list[Call] = field(default_factory=list)

    async def predict(
        self, features: np.ndarray, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> PredictResult:
        self.calls.append(Call(features, dict(headers or {}), timeout_s))
        return await self.answer(features)
