"""`python -m services.features`: serve FeaturesService until SIGTERM, reading the online store that
`SCOREGRAPH_FEATURES_ONLINE_STORE` names."""

from concurrent.futures import ThreadPoolExecutor

import structlog

from services.features.online import open_online_features
from services.features.servicer import features_registration
from services.features.settings import FeaturesSettings
from services.runtime.errors import UpstreamFailed
from services.runtime.server import run, run_service, service_settings
from services.runtime.tracing import configure_tracing, shutdown_tracing

log = structlog.get_logger("services.features")


def main() -> None:
    settings = service_settings(FeaturesSettings, service="features")
    try:
        features = open_online_features(settings)
    except UpstreamFailed as error:
        log.error("online store unreadable", online_store=settings.online_store, error=error.upstream_message)
        raise SystemExit(1) from error
    threads = settings.online_read_threads
    log.info(
        "feature services loaded",
        online_store=settings.online_store,
        read_threads=threads,
        feature_services={name: features.contract(name).width for name in features.feature_services},
    )
    reads = ThreadPoolExecutor(threads, thread_name_prefix="online-read") if threads else None
    tracing = configure_tracing("scoregraph-features")
    try:
        run_service(run(settings, [features_registration(features, reads)]), settings)
    finally:
        if reads is not None:
            reads.shutdown()
        shutdown_tracing(tracing)


if __name__ == "__main__":
    main()
