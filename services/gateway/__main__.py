"""Run the gateway: `python -m services.gateway`, configured by SCOREGRAPH_GATEWAY_* and OTEL_* variables."""

import asyncio
import sys

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from scoregraph.features.v1 import features_pb2_grpc
from scoregraph.postprocess.v1 import postprocess_pb2_grpc

from services.gateway.graph import ScoreGraph
from services.gateway.servicer import gateway_registration
from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import TritonReplicas, upstream_channel
from services.predict.client import PredictError
from services.runtime.logging import configure_logging
from services.runtime.server import run

SERVICE = "scoregraph-gateway"

log = structlog.get_logger(__name__)


def configure_tracing() -> TracerProvider:
    """The global tracer provider, from the standard OTEL_* variables (sampler, resource attributes)."""
    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: SERVICE}))
    trace.set_tracer_provider(provider)
    return provider


async def serve(settings: GatewaySettings) -> None:
    tracing = configure_tracing()
    triton = TritonReplicas.connect(settings.triton_addresses, settings.model_name)
    features = upstream_channel(settings.features_addresses)
    postprocess = upstream_channel(settings.postprocess_addresses)
    try:
        # Before the server binds: a gateway that cannot know the feature order must not take calls.
        served = await triton.load_contract(timeout_s=settings.model_load_timeout_s)
        log.info(
            "model contract loaded",
            model=served.name,
            version=served.version,
            feature_service=served.contract.feature_service,
            features=served.contract.width,
        )
        graph = ScoreGraph(
            settings,
            features=features_pb2_grpc.FeaturesServiceStub(features),
            predictor=triton,
            served_model=served,
            postprocess=postprocess_pb2_grpc.PostprocessServiceStub(postprocess),
            tracer=tracing.get_tracer("services.gateway"),
        )
        await run(settings, [gateway_registration(graph)])
    finally:
        await features.close()
        await postprocess.close()
        await triton.close()
        tracing.shutdown()


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, service="gateway")
    try:
        asyncio.run(serve(settings))
    except PredictError as error:
        log.error("model not served, not starting", model=settings.model_name, error=str(error))
        sys.exit(1)


if __name__ == "__main__":
    main()
