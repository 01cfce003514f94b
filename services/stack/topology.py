"""The embedded stack: which processes run on one machine, on which ports, wired to which upstreams."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.settings import Host, host_port

REPO = Path(__file__).resolve().parents[2]


class StackSettings(BaseSettings):
    """Shape of the local stack (`make up`, `make demo`); each service reads its own settings too."""

    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_STACK_", use_attribute_docstrings=True)

    host: Host = "127.0.0.1"
    """Loopback interface every process binds to (`::1` for IPv6)."""
    gateway_port: int = 50051
    """Gateway.Score is served here."""
    features_port: int = 50061
    """First features replica; replica i listens on features_port + i."""
    features_replicas: int = Field(default=2, ge=1, le=8)
    """Features service processes."""
    postprocess_port: int = 50071
    """First postprocess replica; replica i listens on postprocess_port + i."""
    postprocess_replicas: int = Field(default=2, ge=1, le=8)
    """Postprocess service processes."""
    triton_port: int = 8001
    """gRPC port of the first Triton replica; replica i uses triton_port + 10 i (HTTP one below, metrics
    one above)."""
    triton_replicas: int = Field(default=2, ge=1, le=4)
    """tritonserver processes, each loading the whole model repository."""
    metrics_port: int = 9464
    """Prometheus port of the gateway; the other services count up from it."""
    model_repository: Path = REPO / "services" / "predict" / "model_repository"
    """Triton model repository served locally (make build writes it)."""
    ready_timeout_s: float = 120.0
    """How long `up` waits for every process to report SERVING before giving up."""
    grace_period_s: float = 4.0
    """Drain time each service gets on shutdown; below the supervisor's 5 s before it kills."""
    log_dir: Path | None = None
    """Each process writes its output straight to `<log_dir>/<name>.log`, as a container runtime keeps it,
    instead of to the supervisor, which prefixes every line with the time and the process and prints it.
    With one log line per request per service, that relay costs about 1.5 ms of CPU per Score call on
    the cores the services use; `make bench` sets it. Unset: the supervisor prints everything."""
    faulty_replica: str = ""
    """Processes that get the `fault_*` settings below (e.g. `features-1`, `postprocess-0`, `triton-1`, or
    several, comma-separated: `features-1,triton-1`), as their SCOREGRAPH_<SERVICE>_FAULT_* variables;
    empty: none. To fault every replica of a service, set the service's own variables (e.g.
    SCOREGRAPH_FEATURES_FAULT_HANG) instead."""
    fault_delay_ms: float = Field(default=0.0, ge=0)
    """Milliseconds the faulty replica adds to a `fault_delay_share` of its calls."""
    fault_delay_share: float = Field(default=1.0, ge=0, le=1)
    """Share of the faulty replica's calls that are delayed."""
    fault_error_share: float = Field(default=0.0, ge=0, le=1)
    """Share of the faulty replica's calls answered UNAVAILABLE."""
    fault_hang: bool = False
    """The faulty replica never answers until the caller cancels."""
    respawn_killed_replicas: bool = True
    """Restart a features, postprocess or Triton replica that dies of a signal (SIGKILL, or a crash such as
    tritonserver's SIGSEGV), as an orchestrator would; the gateway routes around it meanwhile. Off, or for
    any other exit (SIGTERM's drain included), the whole stack stops."""


@dataclass(frozen=True)
class StackProcess:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: host:port answering grpc.health.v1 once the process can serve.
    health_address: str = ""


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# Runs "$@" again whenever it dies of a signal other than SIGTERM or SIGINT (a shell reports 128 + the
# signal: 137 SIGKILL, 139 SIGSEGV, 134 SIGABRT); any other exit ends the loop with that exit's status. On
# SIGTERM (which reaches the whole process group) it waits for the service's drain. The respawn line carries
# the time (UTC), so a benchmark report can say which phase a restart fell in.
_RESPAWN = """
trap 'wait "$child"; exit $?' TERM INT
while :; do
  "$@" & child=$!
  wait "$child"; status=$?
  { [ "$status" -gt 128 ] && [ "$status" -ne 143 ] && [ "$status" -ne 130 ]; } || exit "$status"
  echo "$(date -u +%H:%M:%SZ) respawning $* (it died with status $status)"
done
"""


def _respawning(argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", _RESPAWN, "respawn", *argv]


def _fault_env(settings: StackSettings, name: str, prefix: str) -> dict[str, str]:
    if name not in {n.strip() for n in settings.faulty_replica.split(",")}:
        return {}
    values = {
        "FAULT_DELAY_MS": settings.fault_delay_ms,
        "FAULT_DELAY_SHARE": settings.fault_delay_share,
        "FAULT_ERROR_SHARE": settings.fault_error_share,
        "FAULT_HANG": settings.fault_hang,
    }
    return {f"SCOREGRAPH_{prefix}_{key}": str(value).lower() for key, value in values.items()}


def processes(settings: StackSettings) -> list[StackProcess]:
    host = settings.host
    metrics = iter(range(settings.metrics_port, settings.metrics_port + 100))
    # The gateway's first, as documented (a Prometheus port of `metrics_port` is the gateway's, as each
    # service's default is): it was the last, behind every replica's.
    gateway_metrics_port = next(metrics)
    common = {"GRACE_PERIOD_S": str(settings.grace_period_s), "HOST": host}

    def service_env(prefix: str, port: int, metrics_port: int, **extra: str) -> dict[str, str]:
        values = {**common, "PORT": str(port), "METRICS_PORT": str(metrics_port), **extra}
        return {f"SCOREGRAPH_{prefix}_{key}": value for key, value in values.items()}

    replica_argv = _respawning if settings.respawn_killed_replicas else list
    out: list[StackProcess] = []
    triton = []
    for i, port in enumerate(triton_grpc_ports(settings)):
        triton.append(host_port(host, port))
        out.append(
            StackProcess(
                f"triton-{i}",
                replica_argv(
                    _python(
                        "services.predict.tritonserver",
                        "--model-repository",
                        str(settings.model_repository),
                        "--host",
                        host,
                        "--grpc-port",
                        str(port),
                        "--http-port",
                        str(port - 1),
                        "--metrics-port",
                        str(port + 1),
                    )
                ),
                env=_fault_env(settings, f"triton-{i}", "TRITON"),
                health_address=host_port(host, port),
            )
        )
    features = [host_port(host, settings.features_port + i) for i in range(settings.features_replicas)]
    postprocess = [
        host_port(host, settings.postprocess_port + i) for i in range(settings.postprocess_replicas)
    ]
    for service, addresses, first_port in (
        ("features", features, settings.features_port),
        ("postprocess", postprocess, settings.postprocess_port),
    ):
        for i, address in enumerate(addresses):
            name, prefix = f"{service}-{i}", service.upper()
            env = {**service_env(prefix, first_port + i, next(metrics)), **_fault_env(settings, name, prefix)}
            out.append(StackProcess(name, replica_argv(_python(f"services.{service}")), env, address))
    gateway_env = service_env(
        "GATEWAY",
        settings.gateway_port,
        gateway_metrics_port,
        FEATURES_ADDRESSES=",".join(features),
        POSTPROCESS_ADDRESSES=",".join(postprocess),
        TRITON_ADDRESSES=",".join(triton),
    )
    out.append(
        StackProcess(
            "gateway", _python("services.gateway"), gateway_env, host_port(host, settings.gateway_port)
        )
    )
    return out


def triton_grpc_ports(settings: StackSettings) -> list[int]:
    """The gRPC port of each Triton replica (its HTTP port is one below, its metrics port one above)."""
    return [settings.triton_port + 10 * i for i in range(settings.triton_replicas)]


def listening_ports(settings: StackSettings) -> list[int]:
    """Every TCP port the stack's processes listen on: gRPC, Triton's HTTP and metrics, Prometheus."""
    ports = []
    for grpc_port in triton_grpc_ports(settings):
        ports += [grpc_port - 1, grpc_port, grpc_port + 1]
    ports += [settings.features_port + i for i in range(settings.features_replicas)]
    ports += [settings.postprocess_port + i for i in range(settings.postprocess_replicas)]
    ports.append(settings.gateway_port)
    python_services = settings.features_replicas + settings.postprocess_replicas + 1
    ports += range(settings.metrics_port, settings.metrics_port + python_services)
    return ports


def busy_ports(settings: StackSettings) -> list[int]:
    """The stack's ports something else already listens on (a stack left running, another program)."""
    busy = []
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for port in listening_ports(settings):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((settings.host, port))
            except OSError:
                busy.append(port)
    return busy


#: Loopback never goes through a proxy: gRPC and tritonserver's OTLP exporter (libcurl) both honour
#: http_proxy, and a proxy set for the package registries must not swallow calls between the services.
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def process_env(process: StackProcess) -> dict[str, str]:
    """The process's environment: ours, with the repository importable and its own settings on top."""
    env = {**os.environ, **process.env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return unproxied_loopback(env)


def unproxied_loopback(env: dict[str, str]) -> dict[str, str]:
    """`env` with loopback added to its `no_proxy` and `NO_PROXY`."""
    for name in ("no_proxy", "NO_PROXY"):
        hosts = [h for h in env.get(name, "").split(",") if h.strip()]
        env[name] = ",".join([*hosts, *(h for h in _LOOPBACK if h not in hosts)])
    return env
