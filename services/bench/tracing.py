"""What tracing every call costs: Gateway.Score at saturation with tracing off, and with every call sampled
and exported over OTLP to a receiver in a process of its own (where a collector or Jaeger's agent would be).

Saturation is measured closed loop, `concurrency` calls always in flight: the calls answered per second then
are the graph's capacity, a figure fine enough to compare two modes within 10 %, which the open-loop steps
are not. Both stacks are up together and driven in turns of a few seconds: measured one after the other,
the two modes would also measure what the machine's neighbours did in between. The receiver runs on the
same cores, so its CPU is reported beside the graph's figures.

    python -m services.bench.tracing      # the receiver: counts spans by service until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.bench.calls import score_call
from services.bench.loadgen import closed_loop, interleaved, merged
from services.bench.measure import console
from services.bench.processes import (
    OTLP_GRPC_PORT,
    OTLP_HTTP_PORT,
    STACK_SLOTS,
    LocalStack,
    Spawned,
    cpu_seconds,
    listening,
    running_stack,
    stack_ports,
    wait_until,
)
from services.bench.results import TracingRun
from services.stack.collector import TraceCollector, span_counts, span_counts_json

TRACING_OFF = {
    # No receiver inside the stack's supervisor, no spans made (the Python SDK and tritonserver both honour
    # OTEL_SDK_DISABLED), and none exported should a caller's environment name an endpoint.
    "SCOREGRAPH_TRACES_COLLECT": "false",
    "OTEL_SDK_DISABLED": "true",
    "OTEL_TRACES_EXPORTER": "none",
}


RECEIVER_ENDPOINT = f"http://127.0.0.1:{OTLP_HTTP_PORT}"
TRACED = "on (100 % sampled)"


#: The span processors' schedule delay in the benchmark's traced stacks (OpenTelemetry's default is 5000 ms).
#: Under load they export whenever 512 spans are queued, whatever the delay; it only bounds how long the
#: last few wait, which the interleaved saturation turns need to be short.
BSP_SCHEDULE_DELAY_MS = 1000


def tracing_on(endpoint: str) -> dict[str, str]:
    """Every call sampled, every process exporting over OTLP/HTTP (what tritonserver speaks) to `endpoint`."""
    return {
        "OTEL_BSP_SCHEDULE_DELAY": str(BSP_SCHEDULE_DELAY_MS),
        "SCOREGRAPH_TRACES_COLLECT": "false",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


#: Length of one turn of each mode in the interleaved saturation runs.
SLICE_S = 2.5
#: Pause after each turn: the traced stack's span processors export what the turn left within their
#: schedule delay (BSP_SCHEDULE_DELAY_MS), not during the untraced turn that follows.
SETTLE_S = 1.5


async def measure_tracing(
    out: Path,
    traced: LocalStack,
    receiver: Spawned,
    requests: list[gateway_pb2.ScoreRequest],
    seconds: float,
    concurrency: int,
) -> dict[str, TracingRun]:
    """Saturation with tracing `off` and `on`: `traced` (exporting to `receiver`) beside a stack started
    with tracing off, each driven closed loop with `concurrency` calls in flight for `seconds` in all, in
    interleaved turns of about SLICE_S after a warm-up, so both modes see the same machine. The receiver's
    CPU over the runs is charged to the traced calls."""
    rounds = max(1, round(seconds / SLICE_S))
    with running_stack(
        out / "stack-untraced.log", TRACING_OFF, stack_ports(STACK_SLOTS["untraced"]), service_logs=True
    ) as untraced:
        async with contextlib.AsyncExitStack() as calls:
            call_of = {
                key: await calls.enter_async_context(score_call(stack.gateway, requests))
                for key, stack in (("off", untraced), ("on", traced))
            }
            for call in call_of.values():
                await closed_loop(call, seconds=min(3.0, seconds / 2), concurrency=concurrency)
            await asyncio.sleep(SETTLE_S)
            receiver_before = cpu_seconds(receiver.tree)
            runs = await interleaved(
                {
                    key: functools.partial(
                        closed_loop, call, seconds=seconds / rounds, concurrency=concurrency
                    )
                    for key, call in call_of.items()
                },
                rounds,
                pause_s=SETTLE_S,
            )
            await asyncio.sleep(SETTLE_S)  # the last traced turn's spans reach the receiver
            receiver_cpu = cpu_seconds(receiver.tree) - receiver_before
    results = {
        "off": TracingRun("off", merged(runs["off"]), [turn.achieved_rate for turn in runs["off"]]),
        "on": TracingRun(TRACED, merged(runs["on"]), [turn.achieved_rate for turn in runs["on"]]),
    }
    results["on"].receiver_cpu_per_1000 = receiver_cpu / max(results["on"].run.ok, 1) * 1000
    for result in results.values():
        run = result.run
        console.log(
            f"tracing {result.name}: {run.achieved_rate:.0f} calls/s at saturation "
            f"({concurrency} in flight), "
            f"p50 {run.percentile_ms(50):.2f} ms, p99 {run.percentile_ms(99):.2f} ms, {run.errors} errors"
        )
    return results


class SpanCounter(TraceCollector):
    """The traced run's OTLP receiver: it takes what a collector takes (OTLP over gRPC and HTTP) and only
    counts the spans by service, so its CPU is what receiving costs, not what keeping traces costs."""

    def __init__(self) -> None:
        super().__init__(grpc_port=OTLP_GRPC_PORT, http_port=OTLP_HTTP_PORT, max_traces=1)
        self.spans_by_service: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def receive(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        self._count(span_counts(request))

    def receive_json(self, document: dict[str, Any]) -> None:
        # tritonserver's exports: OTLP/JSON, read by json.loads alone (protobuf's JSON parser, which the
        # receiver used before, cost it 0.3 ms of CPU per Score call, on the cores the graph runs on).
        self._count(span_counts_json(document))

    def _count(self, counts: Counter[str]) -> None:
        with self._count_lock:
            self.spans_by_service.update(counts)


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
