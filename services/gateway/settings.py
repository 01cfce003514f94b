"""Settings of the gateway, from `SCOREGRAPH_GATEWAY_*` environment variables."""

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.features.keys import DEV_CARD_KEY
from services.runtime.settings import ServiceSettings, UpstreamAddresses

DependencyFailurePolicy = Literal["uncertain", "fail"]


class GatewaySettings(ServiceSettings):
    """Defaults run the embedded stack: every service on 127.0.0.1, one replica each."""

    # `model_name` is a setting here, not pydantic's namespace.
    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_GATEWAY_", protected_namespaces=())

    features_addresses: UpstreamAddresses = ["127.0.0.1:50061"]
    """Replicas of the features service, `host:port,host:port`: IP addresses, or one DNS name that resolves
    to all replicas. Calls are balanced round robin."""

    postprocess_addresses: UpstreamAddresses = ["127.0.0.1:50071"]
    """Replicas of the postprocess service, in the same form as `features_addresses`."""

    triton_addresses: UpstreamAddresses = ["127.0.0.1:8001"]
    """gRPC addresses of the Triton replicas serving the model. Calls are balanced round robin."""

    model_name: str = "fraud_mlp"
    """Triton model that scores transactions; its feature contract is read from Triton at start-up."""

    model_load_timeout_s: float = Field(default=120.0, gt=0)
    """How long start-up waits for Triton to serve the model before giving up."""

    card_key: SecretStr = SecretStr(DEV_CARD_KEY)
    """Key of the HMAC that turns a card number or token into the card entity key. Must match the key the
    feature pipeline used; the default is the embedded stack's development key."""

    default_deadline_ms: float = Field(default=1000.0, gt=0)
    """Budget of a Score call whose caller set no deadline."""

    hop_reserve_ms: float = Field(default=1.0, ge=0)
    """Time kept back from each downstream call for the gateway's own work after it, so a hop that uses
    its whole timeout still leaves time to answer."""

    on_dependency_failure: DependencyFailurePolicy = "uncertain"
    """What a failed features, predict or postprocess call does: `uncertain` answers VERDICT_UNCERTAIN
    with degraded set and a reason naming the hop; `fail` fails the call with UNAVAILABLE or
    DEADLINE_EXCEEDED naming the hop."""

    max_clock_skew_s: float = Field(default=300.0, ge=0)
    """How far in the future a transaction's created_at may lie, for clocks that run ahead of ours."""

    max_transaction_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How old a transaction's created_at may be: older ones are not being authorized any more."""
