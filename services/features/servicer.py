"""The gRPC face of the features service: decode, read the online store, encode."""

import asyncio
import contextvars
import time
from concurrent.futures import Executor

import grpc
import structlog
from opentelemetry import trace
from scoregraph.features.v1 import features_pb2, features_pb2_grpc

from services.features.codec import request_from_proto, response_from_vector
from services.features.online import OnlineFeatures
from services.runtime import metrics
from services.runtime.server import ServiceRegistration

log = structlog.get_logger(__name__)


class FeaturesServicer(features_pb2_grpc.FeaturesServiceServicer):
    def __init__(self, features: OnlineFeatures, reads: Executor | None) -> None:
        self._features = features
        self._reads = reads

    async def GetFeatures(
        self, request: features_pb2.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetFeaturesResponse:
        started = time.perf_counter()
        feature_request = request_from_proto(request)
        if self._reads is None:
            vector = self._features.read(feature_request)
        else:
            # In a copy of this context, so the store read's span is a child of this call's.
            vector = await asyncio.get_running_loop().run_in_executor(
                self._reads, contextvars.copy_context().run, self._features.read, feature_request
            )
        # Counts only: keys and request values identify a customer.
        counts = {status.value: count for status, count in vector.status_counts().items()}
        trace.get_current_span().set_attributes(
            {
                "scoregraph.feature_service": vector.feature_service,
                **{f"scoregraph.features.{status}": count for status, count in counts.items()},
            }
        )
        for status, count in counts.items():
            if count:
                metrics.FEATURE_STATUSES.labels(vector.feature_service, status).inc(count)
        log.info(
            "features read",
            feature_service=vector.feature_service,
            **counts,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return response_from_vector(vector)


def features_registration(features: OnlineFeatures, reads: Executor | None) -> ServiceRegistration:
    """`reads` runs the blocking store reads; None runs them on the event loop (see FeaturesSettings)."""
    return ServiceRegistration(
        features_pb2.DESCRIPTOR.services_by_name["FeaturesService"],
        FeaturesServicer(features, reads),
        features_pb2_grpc.add_FeaturesServiceServicer_to_server,
    )
