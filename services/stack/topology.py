"""The embedded stack: which processes run on one machine, on which ports, wired to which upstreams."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]


class StackSettings(BaseSettings):
    """Shape of the local stack (`make up`, `make demo`); each service reads its own settings too."""

    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_STACK_", use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Loopback interface every process binds to."""
    gateway_port: int = 50051
    """Gateway.Score is served here."""
    features_port: int = 50061
    """First features replica; replica i listens on features_port + i."""
    features_replicas: int = Field(default=1, ge=1, le=8)
    """Features service processes."""
    postprocess_port: int = 50071
    """First postprocess replica; replica i listens on postprocess_port + i."""
    postprocess_replicas: int = Field(default=1, ge=1, le=8)
    """Postprocess service processes."""
    triton_port: int = 8001
    """gRPC port of the first Triton replica; replica i uses triton_port + 10 i (HTTP one below, metrics
    one above)."""
    triton_replicas: int = Field(default=1, ge=1, le=4)
    """tritonserver processes, each loading the whole model repository."""
    metrics_port: int = 9464
    """Prometheus port of the gateway; the other services count up from it."""
    model_repository: Path = REPO / "services" / "predict" / "model_repository"
    """Triton model repository served locally (make build writes it)."""
    ready_timeout_s: float = 120.0
    """How long `up` waits for every process to report SERVING before giving up."""
    grace_period_s: float = 4.0
    """Drain time each service gets on shutdown; below the supervisor's 5 s before it kills."""


@dataclass(frozen=True)
class StackProcess:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: host:port answering grpc.health.v1 once the process can serve.
    health_address: str = ""


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def processes(settings: StackSettings) -> list[StackProcess]:
    host = settings.host
    metrics = iter(range(settings.metrics_port, settings.metrics_port + 100))
    common = {"GRACE_PERIOD_S": str(settings.grace_period_s), "HOST": host}

    def service_env(prefix: str, port: int, **extra: str) -> dict[str, str]:
        values = {**common, "PORT": str(port), "METRICS_PORT": str(next(metrics)), **extra}
        return {f"SCOREGRAPH_{prefix}_{key}": value for key, value in values.items()}

    out: list[StackProcess] = []
    triton = []
    for i in range(settings.triton_replicas):
        port = settings.triton_port + 10 * i
        triton.append(f"{host}:{port}")
        out.append(
            StackProcess(
                f"triton-{i}",
                _python(
                    "services.predict.tritonserver",
                    "--model-repository",
                    str(settings.model_repository),
                    "--grpc-port",
                    str(port),
                    "--http-port",
                    str(port - 1),
                    "--metrics-port",
                    str(port + 1),
                ),
                health_address=f"{host}:{port}",
            )
        )
    features = [f"{host}:{settings.features_port + i}" for i in range(settings.features_replicas)]
    postprocess = [f"{host}:{settings.postprocess_port + i}" for i in range(settings.postprocess_replicas)]
    for i, address in enumerate(features):
        port = settings.features_port + i
        out.append(
            StackProcess(
                f"features-{i}", _python("services.features"), service_env("FEATURES", port), address
            )
        )
    for i, address in enumerate(postprocess):
        port = settings.postprocess_port + i
        out.append(
            StackProcess(
                f"postprocess-{i}", _python("services.postprocess"), service_env("POSTPROCESS", port), address
            )
        )
    gateway_env = service_env(
        "GATEWAY",
        settings.gateway_port,
        FEATURES_ADDRESSES=",".join(features),
        POSTPROCESS_ADDRESSES=",".join(postprocess),
        TRITON_ADDRESSES=",".join(triton),
    )
    out.append(
        StackProcess("gateway", _python("services.gateway"), gateway_env, f"{host}:{settings.gateway_port}")
    )
    return out


def process_env(process: StackProcess) -> dict[str, str]:
    """The process's environment: ours, with the repository importable and its own settings on top."""
    env = {**os.environ, **process.env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
