"""`python -m services.postprocess`: serve PostprocessService until SIGTERM, with the policies in
`SCOREGRAPH_POSTPROCESS_POLICY_DIR`."""

import structlog

from services.postprocess.policy import PolicyCatalogue, PolicyError
from services.postprocess.servicer import postprocess_registration
from services.postprocess.settings import PostprocessSettings
from services.runtime.server import run, run_service, service_settings
from services.runtime.tracing import configure_tracing, shutdown_tracing

log = structlog.get_logger("services.postprocess")


def main() -> None:
    settings = service_settings(PostprocessSettings, service="postprocess")
    try:
        policies = PolicyCatalogue.load(settings.policy_dir, settings.fallback_policy)
    except PolicyError as error:
        log.error("label policies invalid", error=str(error))
        raise SystemExit(1) from error
    log.info(
        "label policies loaded",
        policies={name: policy.policy_version for name, policy in policies.policies.items()},
    )
    tracing = configure_tracing("scoregraph-postprocess")
    try:
        run_service(run(settings, [postprocess_registration(policies)]), settings)
    finally:
        shutdown_tracing(tracing)


if __name__ == "__main__":
    main()
