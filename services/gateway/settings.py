"""Settings of the gateway, from `SCOREGRAPH_GATEWAY_*` environment variables."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.features.keys import DEV_CARD_KEY
from services.runtime.resilience import HedgePolicy, RetryPolicy
from services.runtime.settings import ServiceSettings, Unsettable, UpstreamAddresses

DependencyFailurePolicy = Literal["uncertain", "fail"]


class GatewaySettings(ServiceSettings):
    """Defaults run the embedded stack: every service on 127.0.0.1."""

    # `model_name` is a setting here, not pydantic's namespace.
    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_GATEWAY_", protected_namespaces=())

    features_addresses: UpstreamAddresses = ["127.0.0.1:50061"]
    """Replicas of the features service, `host:port,host:port`. Calls take the replicas in turn; a hedge or
    retry goes to another one. An address that is a DNS name resolving to several hosts is balanced round
    robin as one replica."""

    postprocess_addresses: UpstreamAddresses = ["127.0.0.1:50071"]
    """Replicas of the postprocess service, in the same form as `features_addresses`."""

    triton_addresses: UpstreamAddresses = ["127.0.0.1:8001"]
    """gRPC addresses of the Triton replicas serving the model, in the same form as `features_addresses`."""

    model_name: str = "fraud_mlp"
    """Triton model that scores transactions; its feature contract is read from Triton at start-up."""

    model_load_timeout_s: float = Field(default=120.0, gt=0)
    """How long start-up waits for Triton to serve the model before giving up."""

    card_key: SecretStr = SecretStr(DEV_CARD_KEY)
    """Key of the HMAC that turns a card number or token into the card entity key. Must match the key the
    feature pipeline used; the default is the embedded stack's development key."""

    default_deadline_ms: float = Field(default=1000.0, gt=0)
    """Budget of a Score call whose caller set no deadline."""

    max_deadline_ms: Unsettable[float] = Field(default=10000.0, gt=0)
    """Longest budget a Score call gets, whatever its caller's deadline: a caller that allows minutes or
    hours is answered within this (UNCERTAIN, or a failure as `on_dependency_failure` says, when a hop runs
    out of it) rather than held while a replica hangs. At least `default_deadline_ms`. `none`: the caller's
    deadline, however long."""

    hop_reserve_ms: float = Field(default=10.0, ge=0)
    """Time kept back from each downstream call for the gateway's own work after it, so a hop that uses
    its whole timeout still leaves time to answer."""

    max_concurrent_rpcs: Unsettable[int] = Field(default=256, gt=0)
    """Score calls served at once; further calls fail fast with RESOURCE_EXHAUSTED rather than queue past
    their deadline, counted and traced as any failed call, and logged in one line a second while shedding
    (health checks are never refused). `none`: no limit."""

    on_dependency_failure: DependencyFailurePolicy = "uncertain"
    """What a failed features, predict or postprocess call does: `uncertain` answers VERDICT_UNCERTAIN
    with degraded set and a reason naming the hop; `fail` fails the call naming the hop: DEADLINE_EXCEEDED,
    UNAVAILABLE (the hop was unavailable or overloaded) or INTERNAL (any other failure)."""

    max_clock_skew_s: float = Field(default=300.0, ge=0)
    """How far in the future a transaction's created_at may lie, for clocks that run ahead of ours."""

    max_transaction_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """How old a transaction's created_at may be: older ones are not being authorized any more."""

    features_hedging: bool = True
    """Send a backup call to another replica of the features service when the first is slow."""

    features_hedge_quantile: float = Field(default=0.95, gt=0, lt=1)
    """The backup goes out once the first call has taken longer than this share of the hop's recent calls
    (the last 512)."""

    features_hedge_floor_ms: float = Field(default=2.0, ge=0)
    """Least hedging delay: faster than this, latency is noise and a backup only adds load."""

    features_hedge_delay_ms: Unsettable[float] = Field(default=None, ge=0)
    """A fixed hedging delay instead of the adaptive one. Unset: adaptive (`hedge_initial_delay_ms` for the
    first 20 calls)."""

    features_hedge_budget: float = Field(default=0.1, ge=0)
    """Backup calls per call at most, as a token bucket that holds `hedge_burst` tokens: 0.1 is 10 %
    extra load at worst."""

    predict_hedging: bool = True
    """Send a backup call to another replica of Triton when the first is slow."""

    predict_hedge_quantile: float = Field(default=0.95, gt=0, lt=1)
    """The backup goes out once the first call has taken longer than this share of the hop's recent calls
    (the last 512)."""

    predict_hedge_floor_ms: float = Field(default=2.0, ge=0)
    """Least hedging delay: faster than this, latency is noise and a backup only adds load."""

    predict_hedge_delay_ms: Unsettable[float] = Field(default=None, ge=0)
    """A fixed hedging delay instead of the adaptive one. Unset: adaptive (`hedge_initial_delay_ms` for the
    first 20 calls)."""

    predict_hedge_budget: float = Field(default=0.1, ge=0)
    """Backup calls per call at most, as a token bucket that holds `hedge_burst` tokens: 0.1 is 10 %
    extra load at worst."""

    postprocess_hedging: bool = True
    """Send a backup call to another replica of the postprocess service when the first is slow."""

    postprocess_hedge_quantile: float = Field(default=0.95, gt=0, lt=1)
    """The backup goes out once the first call has taken longer than this share of the hop's recent calls
    (the last 512)."""

    postprocess_hedge_floor_ms: float = Field(default=2.0, ge=0)
    """Least hedging delay: faster than this, latency is noise and a backup only adds load."""

    postprocess_hedge_delay_ms: Unsettable[float] = Field(default=None, ge=0)
    """A fixed hedging delay instead of the adaptive one. Unset: adaptive (`hedge_initial_delay_ms` for the
    first 20 calls)."""

    postprocess_hedge_budget: float = Field(default=0.1, ge=0)
    """Backup calls per call at most, as a token bucket that holds `hedge_burst` tokens: 0.1 is 10 %
    extra load at worst."""

    hedge_initial_delay_ms: float = Field(default=50.0, ge=0)
    """Hedging delay of a hop until it has the latencies of 20 calls to adapt to."""

    hedge_burst: float = Field(default=10.0, ge=0)
    """Backup calls a hop may send in a row once its budget has built up (the token bucket's size)."""

    retry_max_attempts: int = Field(default=3, ge=1)
    """Tries of a hop call, the first included, on UNAVAILABLE or RESOURCE_EXHAUSTED only; 1 turns retries
    off. Each retry goes to another replica when there is one, and only while the deadline allows."""

    retry_initial_backoff_ms: float = Field(default=5.0, ge=0)
    """Base of the exponential backoff between tries; each wait is random (full jitter) up to it."""

    retry_max_backoff_ms: float = Field(default=50.0, ge=0)
    """Longest wait between tries."""

    retry_budget: float = Field(default=0.1, ge=0)
    """Retries per hop call at most, as a token bucket that holds `retry_burst` tokens, so a failing fleet
    is not sent a storm of retries."""

    retry_burst: float = Field(default=10.0, ge=0)
    """Retries a hop may send in a row once its budget has built up."""

    replica_ejection_ms: float = Field(default=500.0, ge=0)
    """How long a replica that answered UNAVAILABLE (down, draining) or let a call time out (hung) gets no
    calls while others can take them."""

    @model_validator(mode="after")
    def _default_deadline_within_the_cap(self) -> "GatewaySettings":
        if self.max_deadline_ms is not None and self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError(
                f"default_deadline_ms ({self.default_deadline_ms:g}) must not exceed max_deadline_ms "
                f"({self.max_deadline_ms:g})"
            )
        return self

    def hedge_policy(self, hop: str) -> HedgePolicy:
        delay_ms = getattr(self, f"{hop}_hedge_delay_ms")
        return HedgePolicy(
            enabled=getattr(self, f"{hop}_hedging"),
            quantile=getattr(self, f"{hop}_hedge_quantile"),
            floor_s=getattr(self, f"{hop}_hedge_floor_ms") / 1000,
            fixed_delay_s=None if delay_ms is None else delay_ms / 1000,
            budget=getattr(self, f"{hop}_hedge_budget"),
            burst=self.hedge_burst,
            initial_delay_s=self.hedge_initial_delay_ms / 1000,
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            initial_backoff_s=self.retry_initial_backoff_ms / 1000,
            max_backoff_s=self.retry_max_backoff_ms / 1000,
            budget=self.retry_budget,
            burst=self.retry_burst,
        )
