"""Prometheus metrics every scoregraph service exposes on its `/metrics` endpoint.

RED metrics per RPC served (`TelemetryInterceptor`) and per upstream hop called (each attempt of a
`HedgedCall`, hedges and retries included), and the domain's own counters; the resilience counters
(hedges, retries, degraded verdicts by failed hop) are in resilience.py. Label values are closed sets
(method names, status code names, hop names, verdicts, model versions): never anything taken from a request.
"""

from typing import Any

from prometheus_client import Counter, Histogram

# Finer at the low end: a healthy hop answers in about a millisecond, a Score call in a few.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

RPC_SERVER_REQUESTS = Counter(
    "scoregraph_rpc_server_requests",
    "RPCs served, by method and the gRPC status code answered.",
    ["rpc_service", "rpc_method", "grpc_code"],
)
RPC_SERVER_DURATION = Histogram(
    "scoregraph_rpc_server_duration_seconds",
    "Time from receiving an RPC to answering it, by method and the gRPC status code answered.",
    ["rpc_service", "rpc_method", "grpc_code"],
    buckets=LATENCY_BUCKETS_S,
)
RPC_SERVER_UNSERVED = Counter(
    "scoregraph_rpc_server_unserved",
    "RPCs that ended before the service took them up, by method: their deadline passed, or their caller "
    "cancelled them, while they waited for a busy server; gRPC itself answered them DEADLINE_EXCEEDED or "
    "CANCELLED. Not in scoregraph_rpc_server_requests_total, which counts the calls served.",
    ["rpc_service", "rpc_method"],
)
UPSTREAM_REQUESTS = Counter(
    "scoregraph_upstream_requests",
    "Calls to an upstream hop (each attempt, hedge and retry counts), by hop and the gRPC status code it "
    "answered (CANCELLED: another attempt answered first).",
    ["hop", "grpc_code"],
)
UPSTREAM_DURATION = Histogram(
    "scoregraph_upstream_duration_seconds",
    "Time a call to an upstream hop took (each attempt, hedge and retry), by hop and the gRPC status code it "
    "answered.",
    ["hop", "grpc_code"],
    buckets=LATENCY_BUCKETS_S,
)
VERDICTS = Counter(
    "scoregraph_verdicts",
    "Score verdicts answered, by the model (name and version) that scored them (empty when none did) and "
    "whether they were degraded (a failed hop, stale features).",
    ["model_name", "model_version", "verdict", "degraded"],
)
FEATURE_STATUSES = Counter(
    "scoregraph_feature_values",
    "Feature values served, by feature service and status (present, missing, stale).",
    ["feature_service", "status"],
)


_UPSTREAM_SERIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_upstream_call(hop: str, code: str, seconds: float) -> None:
    """Count a call to `hop` that ended with the gRPC status named `code` and took `seconds`, in the per-hop
    RED metrics (their children looked up once per hop and code)."""
    series = _UPSTREAM_SERIES.get((hop, code))
    if series is None:
        series = _UPSTREAM_SERIES[hop, code] = (
            UPSTREAM_REQUESTS.labels(hop, code),
            UPSTREAM_DURATION.labels(hop, code),
        )
    series[0].inc()
    series[1].observe(seconds)
