"""What tracing every call costs: Gateway.Score at saturation with every call sampled (traced in every
process, Triton included, and exported over OTLP to a receiver in a process of its own, where a collector
or Jaeger's agent would be), against the same stack sampling nothing, and against a stack with tracing off.

Saturation is measured closed loop, `concurrency` calls always in flight: the calls answered per second then
are the graph's capacity. The modes are driven in turns of a few seconds: measured one after the other,
they would also measure what the machine's neighbours did in between. The receiver runs on the same cores,
so its CPU is reported beside the graph's figures.

Two baselines. On a busy machine two stacks differ by more than the 10 % sought here: driven the same way
with tracing off in both, their saturation rates differed by 3-9 % (ratios 0.91 and 0.97), one turn against
the other by up to 4x. So the traced stack is also driven sampling nothing (`UNSAMPLED`): its calls carry a
W3C `traceparent` whose sampled flag is off, so every Python service makes non-recording spans and exports
nothing (the parent-based sampler, OpenTelemetry's default), and the gateway does not pass the context on to
Triton, which then traces nothing. The same processes with and without sampling give
sampling's cost free of the difference between stacks. But the stack with tracing off is the baseline a user
compares with, and on a quiet machine two stacks with tracing off agreed (0.99), while the stack sampling
nothing served 0.94 of one with tracing off: tracing on costs something even for a call it does not sample.
Every hop carries the `traceparent`, for which grpcio spends 20-35 us of CPU on the server and 20-30 us on
the client, and each span is made, if not recorded (2-5 us).

A fourth mode tells those two apart: the stack with tracing off, its calls carrying the same unsampled
`traceparent` (`PROPAGATED`). OpenTelemetry's API passes a caller's trace context on to every hop with the SDK
off, so those calls pay the header's transport and parse on every hop, and the ids in the log lines, but make
no span: what a traced caller costs a stack that does not trace, and the first step of tracing's cost.

Then the traced stack is driven open loop at half its unsampled saturation rate, sampling every call and
none in turns (`measure_steady_tracing`). At saturation the cores are busy in both modes, so the CPU per
call there moves with the rate however it falls; at one rate for both modes the difference in CPU per call
is sampling's own.

    python -m services.bench.tracing      # the receiver: counts spans by service until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.bench.calls import score_call
from services.bench.loadgen import Call, RunResult, closed_loop, interleaved, merged, open_loop
from services.bench.measure import console
from services.bench.processes import (
    OTLP_GRPC_PORT,
    OTLP_HTTP_PORT,
    STACK_SLOTS,
    LocalStack,
    Spawned,
    cpu_by_part,
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
UNSAMPLED = "on, 0 % sampled (same stack)"
PROPAGATED = "off, the caller's traceparent passed on"
#: The span processors' schedule delay in the benchmark's traced stacks: OpenTelemetry's default, what a
#: user's stack runs with (and tritonserver's, which takes it too). A processor exports when 512 spans are
#: queued or when the delay has passed since its last export; each export costs 1-2 ms of CPU in the
#: process and about 1 ms in the receiver whatever its size, so a shorter delay would charge tracing for
#: exports a user's stack does not make (with 1000 ms, about 8 a second here instead of 3).
BSP_SCHEDULE_DELAY_MS = 5000


def tracing_on(endpoint: str) -> dict[str, str]:
    """Every call sampled (a call that comes with no trace context starts a sampled one; one whose context
    says "not sampled" is not), every process exporting over OTLP/HTTP (what tritonserver speaks) to
    `endpoint`."""
    return {
        "OTEL_BSP_SCHEDULE_DELAY": str(BSP_SCHEDULE_DELAY_MS),
        "SCOREGRAPH_TRACES_COLLECT": "false",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def unsampled_trace_context() -> tuple[tuple[str, str], ...]:
    """The metadata of a call whose caller decided not to sample it: a fresh W3C trace context, flags 00."""
    return (("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"),)


#: Length of one turn of each mode in the interleaved saturation runs.
SLICE_S = 2.5
#: Pause after each turn of every mode: the traced stack's span processors export what a turn left within
#: their schedule delay (BSP_SCHEDULE_DELAY_MS), in the pause and not in the turn that follows.
SETTLE_S = BSP_SCHEDULE_DELAY_MS / 1000 + 0.5


class _Turns:
    """Turns of the tracing modes and what each cost: the CPU, by part of the graph, of the processes that
    served it (`serving[key]`) over the turn and the pause of `settle_s` after it (what a turn leaves to
    export is its own)."""

    def __init__(self, serving: dict[str, list[Any]], settle_s: float) -> None:
        self._serving = serving
        self._settle_s = settle_s
        self.cpu: dict[str, list[Counter[str]]] = {key: [] for key in serving}

    def _used(self, key: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for tree in self._serving[key]:
            total.update(cpu_by_part(tree))
        return total

    def turn(self, key: str, drive: Callable[[], Awaitable[RunResult]]) -> Callable[[], Awaitable[RunResult]]:
        async def run() -> RunResult:
            before = self._used(key)
            result = await drive()
            await asyncio.sleep(self._settle_s)
            after = self._used(key)
            after.subtract(before)
            self.cpu[key].append(after)
            return result

        return run

    def forget(self) -> None:
        """Drop what the turns so far cost (a warm-up's)."""
        for turns in self.cpu.values():
            turns.clear()

    def result(self, key: str, name: str, runs: list[RunResult]) -> TracingRun:
        run = merged(runs)
        spent = self.cpu[key]
        return TracingRun(
            name,
            run,
            [turn.achieved_rate for turn in runs],
            cpu_per_1000=sum(sum(turn.values()) for turn in spent) / max(run.ok, 1) * 1000,
            turn_cpu_per_1000=[
                {part: part_s / max(turn_run.ok, 1) * 1000 for part, part_s in sorted(turn_spent.items())}
                for turn_spent, turn_run in zip(spent, runs, strict=True)
            ],
        )


async def measure_tracing(
    out: Path,
    traced: LocalStack,
    receiver: Spawned,
    requests: list[gateway_pb2.ScoreRequest],
    seconds: float,
    concurrency: int,
    settle_s: float = SETTLE_S,
) -> dict[str, TracingRun]:
    """Saturation `on` (every call sampled), `unsampled` (the same stack sampling nothing), `off` (a stack
    started with tracing off, up beside `traced`) and `propagated` (that stack, its calls carrying an
    unsampled `traceparent`, which every hop passes on), each driven closed loop with `concurrency` calls in
    flight for `seconds` in all, in interleaved turns of about SLICE_S after a warm-up, so all modes see the
    same machine. `traced` exports to `receiver`, whose CPU over the runs is charged to the traced calls.
    Each mode's CPU per call is its stack's over its turns and the pause of `settle_s` after each, in all
    and turn by turn for each process."""
    rounds = max(1, round(seconds / SLICE_S))
    with running_stack(
        out / "stack-untraced.log", TRACING_OFF, stack_ports(STACK_SLOTS["untraced"]), service_logs=True
    ) as untraced:
        async with contextlib.AsyncExitStack() as calls:
            call_of = {
                "off": await calls.enter_async_context(score_call(untraced.gateway, requests)),
                "propagated": await calls.enter_async_context(
                    score_call(untraced.gateway, requests, unsampled_trace_context)
                ),
                "unsampled": await calls.enter_async_context(
                    score_call(traced.gateway, requests, unsampled_trace_context)
                ),
                "on": await calls.enter_async_context(score_call(traced.gateway, requests)),
            }
            turns = _Turns(
                {
                    "off": [untraced.tree],
                    "propagated": [untraced.tree],
                    "unsampled": [traced.tree],
                    "on": [traced.tree, receiver.tree],
                },
                settle_s,
            )

            def saturate(call: Call, turn_s: float) -> Callable[[], Awaitable[RunResult]]:
                return lambda: closed_loop(call, seconds=turn_s, concurrency=concurrency)

            for key, call in call_of.items():  # warm-up, its CPU not counted
                await turns.turn(key, saturate(call, min(3.0, seconds / 2)))()
            turns.forget()
            receiver_before = cpu_seconds(receiver.tree)
            runs = await interleaved(
                {key: turns.turn(key, saturate(call, seconds / rounds)) for key, call in call_of.items()},
                rounds,
            )
            receiver_cpu = cpu_seconds(receiver.tree) - receiver_before
    names = {"off": "off", "propagated": PROPAGATED, "unsampled": UNSAMPLED, "on": TRACED}
    results = {key: turns.result(key, names[key], runs[key]) for key in names}
    results["on"].receiver_cpu_per_1000 = receiver_cpu / max(results["on"].run.ok, 1) * 1000
    return _logged(results, f"at saturation ({concurrency} in flight)")


#: Length of one turn of each mode at a steady rate.
STEADY_TURN_S = 4.0


async def measure_steady_tracing(
    traced: LocalStack,
    receiver: Spawned,
    requests: list[gateway_pb2.ScoreRequest],
    rate: float,
    rounds: int,
    settle_s: float = SETTLE_S,
    turn_s: float = STEADY_TURN_S,
) -> dict[str, TracingRun]:
    """`on` and `unsampled` on `traced` at a steady `rate` (open loop, below saturation), in `rounds`
    interleaved turns of `turn_s`: what sampling every call costs a stack that is not saturated, in CPU per
    call and in latency. At saturation the cores are busy in both modes, so the CPU per call there is their
    time over the calls served and moves with the rate however it falls, the machine's moods included; at
    one rate for both modes it is sampling's alone."""
    async with contextlib.AsyncExitStack() as calls:
        call_of = {
            "unsampled": await calls.enter_async_context(
                score_call(traced.gateway, requests, unsampled_trace_context)
            ),
            "on": await calls.enter_async_context(score_call(traced.gateway, requests)),
        }
        turns = _Turns({"unsampled": [traced.tree], "on": [traced.tree, receiver.tree]}, settle_s)

        def steady(call: Call) -> Callable[[], Awaitable[RunResult]]:
            return lambda: open_loop(call, rate, turn_s)

        runs = await interleaved(
            {key: turns.turn(key, steady(call)) for key, call in call_of.items()}, rounds
        )
    names = {"unsampled": UNSAMPLED, "on": TRACED}
    results = {key: turns.result(key, names[key], runs[key]) for key in ("unsampled", "on")}
    return _logged(results, f"at a steady {rate:.0f}/s")


def _logged(results: dict[str, TracingRun], how: str) -> dict[str, TracingRun]:
    for result in results.values():
        run = result.run
        console.log(
            f"tracing {result.name} {how}: {run.achieved_rate:.0f} calls/s, "
            f"p50 {run.percentile_ms(50):.2f} ms, p99 {run.percentile_ms(99):.2f} ms, "
            f"{run.errors + run.dropped} errors, CPU {result.cpu_per_1000:.2f} s per 1000 calls"
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
