"""Run the gateway: `python -m services.gateway`, configured by SCOREGRAPH_GATEWAY_* and OTEL_* variables."""

import sys

import structlog

from services.gateway.graph import ScoreGraph
from services.gateway.servicer import gateway_registration
from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import Upstreams
from services.predict.client import PredictError
from services.runtime.server import run, run_service, service_settings
from services.runtime.tracing import configure_tracing, shutdown_tracing

SERVICE = "scoregraph-gateway"

log = structlog.get_logger(__name__)


async def serve(settings: GatewaySettings) -> None:
    tracing = configure_tracing(SERVICE)
    upstreams = Upstreams.connect(settings)
    try:
        # Before the server binds: a gateway that cannot know the feature order must not take calls.
        served = await upstreams.triton.load_contract(timeout_s=settings.model_load_timeout_s)
        log.info(
            "model contract loaded",
            model=served.name,
            version=served.version,
            feature_service=served.contract.feature_service,
            features=served.contract.width,
        )
        graph = ScoreGraph(
            settings,
            features=upstreams.features,
            predictor=upstreams.predict,
            served_model=served,
            postprocess=upstreams.postprocess,
            tracer=tracing.get_tracer("services.gateway"),
        )
        # The edge: a caller's baggage and tracestate stop here.
        await run(settings, [gateway_registration(graph)], edge=True)
    finally:
        await upstreams.close()
        shutdown_tracing(tracing)


def main() -> None:
    settings = service_settings(GatewaySettings, service="gateway")
    try:
        run_service(serve(settings), settings)
    except PredictError as error:
        log.error("model not served, not starting", model=settings.model_name, error=str(error))
        sys.exit(1)


if __name__ == "__main__":
    main()
