"""Settings of the features service, from `SCOREGRAPH_FEATURES_*` environment variables."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.features.feature_service import FEATURE_REPO
from services.runtime.settings import ServiceSettings, Unsettable


class FeaturesSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_FEATURES_")

    port: int = Field(default=50061, ge=0, lt=65536)
    """Port of the gRPC server; 0 picks a free one."""

    metrics_port: int = Field(default=9465, ge=0, lt=65536)
    """Port of the Prometheus `/metrics` endpoint, on the same interface as `host`; 0 disables it."""

    feature_repo: Path = FEATURE_REPO
    """Feast repository folder: its `feature_store.yaml` names the registry and the offline store."""

    online_store: Literal["sqlite", "redis"] = "sqlite"
    """Online store to read: `sqlite` (the file `feature_store.yaml` names, the embedded stack) or `redis`
    (at `redis_address`). Both are read through the same registry."""

    redis_address: str = Field(default="127.0.0.1:6379", min_length=1)
    """Redis server as `host:port` when `online_store` is `redis`; options of Feast's Redis connection
    string may follow, e.g. `redis:6379,password=...,ssl=true`."""

    redis_timeout_s: float = Field(default=1.0, gt=0)
    """Seconds a Redis connect or read may take before the read fails UNAVAILABLE. The Redis client does
    not retry: the caller's retries and hedges do."""

    read_threads: Unsettable[int] = Field(default=None, ge=0)
    """Threads that run the blocking online store reads; 0 reads on the event loop. Unset: 0 for `sqlite`,
    4 for `redis`. A SQLite read is local CPU work (about 1 ms) that a thread only delays (about 0.3 ms a
    read, measured); a Redis read waits on the network, and a dead server must not stall the event loop's
    health checks and cancellations. Give SQLite threads too when something materializes into its file
    while serving: a writer's lock then blocks reads for up to 5 s."""

    @property
    def online_read_threads(self) -> int:
        if self.read_threads is not None:
            return self.read_threads
        return 0 if self.online_store == "sqlite" else 4
