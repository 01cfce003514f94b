"""What tracing every call costs: Gateway.Score at saturation with tracing off, and with every call sampled
and exported over OTLP to a receiver in a process of its own (where a collector or Jaeger's agent would be).

Saturation is measured closed loop, `concurrency` calls always in flight: the calls answered per second then
are the graph's capacity, a figure fine enough to compare two modes within 10 %, which the open-loop steps
are not. The receiver runs on the same cores, so its CPU is reported beside the graph's figures.

    python -m services.bench.tracing      # the receiver: counts spans by service until SIGTERM
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.bench.calls import score_call
from services.bench.loadgen import closed_loop
from services.bench.measure import console
from services.bench.processes import (
    OTLP_GRPC_PORT,
    OTLP_HTTP_PORT,
    STACK_SLOTS,
    Spawned,
    cpu_seconds,
    listening,
    running_stack,
    stack_ports,
    wait_until,
)
from services.bench.results import TracingRun
from services.stack.collector import TraceCollector

TRACING_OFF = {
    # No receiver inside the stack's supervisor, no spans made (the Python SDK and tritonserver both honour
    # OTEL_SDK_DISABLED), and none exported should a caller's environment name an endpoint.
    "SCOREGRAPH_TRACES_COLLECT": "false",
    "OTEL_SDK_DISABLED": "true",
    "OTEL_TRACES_EXPORTER": "none",
}


RECEIVER_ENDPOINT = f"http://127.0.0.1:{OTLP_HTTP_PORT}"
TRACED = "on (100 % sampled)"


def tracing_on(endpoint: str) -> dict[str, str]:
    """Every call sampled, every process exporting over OTLP/HTTP (what tritonserver speaks) to `endpoint`."""
    return {
        "SCOREGRAPH_TRACES_COLLECT": "false",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


async def measure_saturation(
    name: str,
    gateway: str,
    requests: list[gateway_pb2.ScoreRequest],
    seconds: float,
    concurrency: int,
    receiver: Spawned | None = None,
) -> TracingRun:
    """Calls answered per second with `concurrency` in flight, after a warm-up; and the receiver's CPU."""
    async with score_call(gateway, requests) as call:
        await closed_loop(call, seconds=min(3.0, seconds / 2), concurrency=concurrency)
        receiver_before = cpu_seconds(receiver.tree) if receiver else 0.0
        run = await closed_loop(call, seconds=seconds, concurrency=concurrency)
    result = TracingRun(name, run)
    if receiver:
        result.receiver_cpu_per_1000 = (cpu_seconds(receiver.tree) - receiver_before) / max(run.ok, 1) * 1000
    console.log(
        f"tracing {name}: {run.achieved_rate:.0f} calls/s at saturation ({concurrency} in flight), "
        f"p50 {run.percentile_ms(50):.2f} ms, p99 {run.percentile_ms(99):.2f} ms, {run.errors} errors"
    )
    return result


class SpanCounter(TraceCollector):
    """The traced run's OTLP receiver: it takes what a collector takes (OTLP over gRPC and HTTP) and only
    counts the spans by service, so its CPU is what receiving costs, not what keeping traces costs."""

    def __init__(self) -> None:
        super().__init__(grpc_port=OTLP_GRPC_PORT, http_port=OTLP_HTTP_PORT, max_traces=1)
        self.spans_by_service: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "unknown",
            )
            spans = sum(len(scope.spans) for scope in resource_spans.scope_spans)
            with self._count_lock:
                self.spans_by_service[service] += spans


def start_receiver(out: Path) -> Spawned:
    """`python -m services.bench.tracing` on the benchmark's OTLP ports, once it listens: the traced
    stacks export there (`tracing_on(RECEIVER_ENDPOINT)`)."""
    receiver = Spawned([sys.executable, "-m", "services.bench.tracing"], {}, out / "otlp-receiver.log")
    wait_until(lambda: listening("127.0.0.1", OTLP_HTTP_PORT), receiver, 60, "the OTLP receiver")
    return receiver


def spans_received(receiver: Spawned) -> dict[str, int]:
    """What a stopped receiver counted: the last line it printed."""
    lines = receiver.log_path.read_text().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"the OTLP receiver printed no counts:\n{receiver.log_tail()}") from None


async def measure_traced(
    out: Path,
    requests: list[gateway_pb2.ScoreRequest],
    seconds: float,
    concurrency: int,
) -> TracingRun:
    """Saturation with 100 % sampling, on a stack of its own exporting to a receiver of its own. The spans
    counted are the whole stack's life: warm-up, run, and what the services flush as they stop."""
    receiver = start_receiver(out)
    try:
        ports = stack_ports(STACK_SLOTS["graph"])
        with running_stack(out / "stack-traced.log", tracing_on(RECEIVER_ENDPOINT), ports) as stack:
            result = await measure_saturation(TRACED, stack.gateway, requests, seconds, concurrency, receiver)
    finally:
        receiver.stop()
    result.spans_by_service = spans_received(receiver)
    return result


async def measure_untraced(
    out: Path,
    requests: list[gateway_pb2.ScoreRequest],
    seconds: float,
    concurrency: int,
) -> TracingRun:
    """Saturation with tracing off, on a stack of its own (the others are traced)."""
    ports = stack_ports(STACK_SLOTS["untraced"])
    with running_stack(out / "stack-untraced.log", TRACING_OFF, ports) as stack:
        return await measure_saturation("off", stack.gateway, requests, seconds, concurrency)


def receive_until_stopped() -> None:
    """Count spans until SIGTERM, then print the counts as one JSON line."""
    counter = SpanCounter().start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    counter.stop()
    print(json.dumps(dict(counter.spans_by_service)), flush=True)


if __name__ == "__main__":
    receive_until_stopped()
