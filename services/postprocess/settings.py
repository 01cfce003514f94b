"""Settings of the postprocess service, from `SCOREGRAPH_POSTPROCESS_*` environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import ServiceSettings

DEFAULT_POLICY_DIR = Path(__file__).parent / "policies"


class PostprocessSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_POSTPROCESS_")

    port: int = Field(default=50071, ge=0, lt=65536)
    """Port of the gRPC server; 0 picks a free one."""

    metrics_port: int = Field(default=9466, ge=0, lt=65536)
    """Port of the Prometheus `/metrics` endpoint, on the same interface as `host`; 0 disables it."""

    policy_dir: Path = DEFAULT_POLICY_DIR
    """Folder of label policy files (`*.yaml`), all loaded and validated at start-up."""

    fallback_policy: str = "fraud_mlp"
    """File name, without `.yaml`, of the policy that labels requests naming no model (the predict hop gave
    no score): the policy of the model the gateway serves."""
