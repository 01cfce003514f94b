"""make bench: scoregraph's latency and throughput beside what users would run instead, in one run.

    python -m services.bench [--quick]

Contenders, all on this machine, fed the same live transactions:
- floors: Feast's in-process `get_online_features`, a direct tritonclient call to Triton, and one bare gRPC
  round trip between two Python processes (what any hop costs at least), one at a time;
- features: scoregraph's features service (GetFeatures on one replica) and Feast's own server (`feast serve`);
- the graph: Gateway.Score on the embedded stack (python -m services.stack up), every call traced and exported
  over OTLP to a receiver in a process of its own;
- the monolith: validation, Feast, onnxruntime and the policy in one process (services.bench.monolith).
Each is driven one call at a time (its latency floor), then open loop at rates that close in on its
saturation. Then: the graph at half its saturation rate; hedging on and off with one slow features replica,
beside the healthy stack; the graph's saturation with tracing at 100 % sampling, sampling nothing and, on a
stack of its own, off, its calls with and without a caller's traceparent; sampling every call and none at a
steady half of that saturation rate. Each of these comparisons drives its contenders in turns of a few
seconds, with their stacks up side by side, so they share what the machine's neighbours do. The report
(markdown with issue #6's targets, and PNG plots) goes to results/bench-<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from services.bench.bare_grpc import bare_call
from services.bench.calls import features_call, score_call, triton_call
from services.bench.feast_contenders import feast_sdk_call, feast_server_call, start_feast_server
from services.bench.hedging import measure_slow_replica
from services.bench.inputs import BenchInputs, bench_inputs
from services.bench.measure import SweepPlan, console, measure_contender, measure_floor, run_step
from services.bench.processes import (
    MONOLITH_PORT,
    STACK_SLOTS,
    Spawned,
    running_stack,
    stack_ports,
    start_bare_grpc,
    start_monolith,
    start_together,
)
from services.bench.report import write_report
from services.bench.results import SLO_P99_MS, BenchResults, Contender
from services.bench.tracing import (
    BSP_SCHEDULE_DELAY_MS,
    RECEIVER_ENDPOINT,
    measure_steady_tracing,
    measure_tracing,
    spans_received,
    start_receiver,
    tracing_on,
)
from services.stack.supervisor import interrupt_on_hangup_or_sigterm
from services.stack.topology import REPO
from services.stack.traffic import load_live

#: Distinct transactions each contender cycles through (the Feast rows and vectors are built for these).
DISTINCT_INPUTS = 500


@dataclass(frozen=True)
class BenchPlan:
    sweep: SweepPlan
    hedging_rate: float
    """Open-loop rate of the hedging runs: moderate, so the slow replica, not queueing, sets the tail. The
    traced graph sustains about 60/s here; at 50/s, three gateways and two stacks on 2 cores, every run's
    p99 (healthy 135 ms) was set by queueing and the machine, at 25/s the slow replica shows."""
    hedging_s: float
    saturation_s: float
    saturation_concurrency: int = 16
    steady_tracing_rounds: int = 6
    """Rounds of turns of the sampled and unsampled modes at half the unsampled saturation rate."""


#: The default run stays within 10 minutes on two cores, --quick within about 3: each starts three stacks
#: (15-20 s apiece when the machine is otherwise idle), a second gateway, the monolith and `feast serve`.
PLANS = {
    "default": BenchPlan(
        SweepPlan(step_s=5.0, floor_calls=1000, warmup_calls=200, factor=1.6, resolution=1.25, max_steps=8),
        hedging_rate=25,
        hedging_s=32.0,
        # Ten rounds of the four tracing modes: the median of ten turn ratios holds still where that of four
        # rounds did not.
        saturation_s=25.0,
    ),
    "quick": BenchPlan(
        SweepPlan(step_s=1.5, floor_calls=200, warmup_calls=50, factor=2.0, resolution=2.0, max_steps=4),
        hedging_rate=25,
        hedging_s=8.0,
        saturation_s=3.0,
        steady_tracing_rounds=1,
    ),
}
#: Order of the summary table: the floors, the feature servers, then the whole graph beside the monolith.
ORDER = ("grpc_floor", "feast_floor", "triton_floor", "features_service", "feast_server", "graph", "monolith")


class Progress:
    """Prints each phase with the time since the process started (imports included: they take a while),
    so a slow phase shows where it happens."""

    def __init__(self) -> None:
        self.started = psutil.Process().create_time()
        self.phases: list[tuple[str, str]] = []
        """(UTC time it started, phase), for the report: a replica restart can be placed in its phase."""

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.started

    def __call__(self, phase: str) -> None:
        self.phases.append((f"{datetime.now(UTC):%H:%M:%SZ}", phase))
        console.rule(f"[{self.elapsed_s:5.0f} s] {phase}", align="left", characters="-")


async def measure_graph_stack(
    out: Path,
    plan: BenchPlan,
    inputs: BenchInputs,
    results: BenchResults,
    progress: Progress,
    receiver: Spawned,
) -> None:
    """Everything measured on the graph's stack, traced to `receiver`: Triton's floor, the hedging runs
    (beside a stack with a slow replica), the graph's sweep and half-load run, its saturation with and
    without tracing (beside an untraced stack), and one features replica on its own."""
    requests = inputs.score_requests
    progress("graph stack: starting")
    traced = tracing_on(RECEIVER_ENDPOINT)
    with running_stack(
        out / "stack-graph.log", traced, stack_ports(STACK_SLOTS["graph"]), service_logs=True
    ) as stack:
        progress("graph stack: Triton floor")
        async with triton_call(stack.address("triton-0"), inputs.vectors) as call:
            floor = await measure_floor("Triton", call, plan.sweep)
        results.contenders.append(
            Contender("triton_floor", "floor: Triton ModelInfer (tritonclient, direct)", floor)
        )
        # Before the sweep: the hedging delay follows recent latency, which a sweep to saturation would
        # leave high.
        progress("stack with a slow features replica beside it: hedging healthy, off and on, in turns")
        results.hedging.update(
            await measure_slow_replica(
                out, requests, plan.hedging_rate, plan.hedging_s, traced, healthy=stack
            )
        )
        progress("graph stack: Gateway.Score")
        async with score_call(stack.gateway, requests) as call:
            graph = await measure_contender(
                "graph", "scoregraph graph (Gateway.Score)", call, stack.tree, plan.sweep
            )
            results.contenders.append(graph)
            if graph.max_sustained_rate:
                rate = round(graph.max_sustained_rate / 2)
                progress(f"graph stack: Gateway.Score at half its max sustained rate, {rate}/s")
                results.half_load = await run_step(call, stack.tree, rate, plan.sweep.step_s)
        progress(
            "untraced stack beside it: saturation, sampled, unsampled, tracing off and tracing off with a "
            "caller's traceparent, in turns"
        )
        results.tracing.update(
            await measure_tracing(
                out, stack, receiver, requests, plan.saturation_s, plan.saturation_concurrency
            )
        )
        if rate := round(results.tracing["unsampled"].rate / 2):
            progress(f"graph stack: sampled and unsampled at a steady {rate}/s (half saturation), in turns")
            results.tracing_steady.update(
                await measure_steady_tracing(stack, receiver, requests, rate, plan.steady_tracing_rounds)
            )
        progress("graph stack: features service (features-0 alone)")
        async with features_call(stack.address("features-0"), inputs.feature_requests) as call:
            results.contenders.append(
                await measure_contender(
                    "features_service",
                    "scoregraph features service (GetFeatures, 1 replica)",
                    call,
                    stack.process_of("features-0"),
                    plan.sweep,
                )
            )


async def measure_monolith_and_feast_server(
    out: Path, plan: BenchPlan, inputs: BenchInputs, results: BenchResults, progress: Progress
) -> None:
    """The two one-process contenders, started together and measured one after the other (the other
    idles)."""
    progress("monolith and feast serve: starting")
    monolith, feast = await start_together(lambda: start_monolith(out), lambda: start_feast_server(out))
    try:
        progress("monolith")
        async with score_call(f"127.0.0.1:{MONOLITH_PORT}", inputs.score_requests) as call:
            results.contenders.append(
                await measure_contender("monolith", "monolith (one process)", call, monolith.tree, plan.sweep)
            )
        monolith.stop()
        progress("feast serve")
        async with feast_server_call(inputs.feast_bodies) as call:
            results.contenders.append(
                await measure_contender(
                    "feast_server", "Feast feature server (feast serve, HTTP)", call, feast.tree, plan.sweep
                )
            )
    finally:
        monolith.stop()
        feast.stop()


async def run_bench(out: Path, plan: BenchPlan, progress: Progress) -> BenchResults:
    progress("inputs: live transactions, Feast rows, model vectors")
    inputs = bench_inputs(load_live(), DISTINCT_INPUTS)
    results = BenchResults([])

    progress("Feast in process: floor")
    async with feast_sdk_call(inputs.entity_rows) as call:
        floor = await measure_floor("Feast SDK", call, plan.sweep)
    results.contenders.append(
        Contender("feast_floor", "floor: Feast get_online_features (in process)", floor)
    )

    progress("bare gRPC server: floor of one hop")
    bare = start_bare_grpc(out)
    try:
        async with bare_call() as call:
            floor = await measure_floor("bare gRPC", call, plan.sweep)
    finally:
        bare.stop()
    results.contenders.append(
        Contender("grpc_floor", "floor: one gRPC round trip (grpc.aio, health check, no work)", floor)
    )

    progress("OTLP receiver (its own process): starting")
    receiver = start_receiver(out)
    try:
        await measure_graph_stack(out, plan, inputs, results, progress, receiver)
    finally:
        receiver.stop()
    results.tracing["on"].spans_by_service = spans_received(receiver)

    await measure_monolith_and_feast_server(out, plan, inputs, results, progress)
    results.contenders.sort(key=lambda c: ORDER.index(c.key))
    return results


def machine(mode: str, plan: BenchPlan, progress: Progress) -> dict:
    return {
        "cpu": platform.processor() or _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            pkg: metadata.version(pkg)
            for pkg in ("grpcio", "feast", "tritonclient", "onnxruntime", "aiohttp")
        },
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0 wheel, CPU, Python backend)",
        "mode": mode,
        "duration_s": progress.elapsed_s,
        "phases": progress.phases,
        "saturation_concurrency": plan.saturation_concurrency,
        "bsp_schedule_delay_ms": BSP_SCHEDULE_DELAY_MS,
        "slo_p99_ms": SLO_P99_MS,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter steps (a smoke run)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "default"
    plan = PLANS[mode]
    out = REPO / "results" / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    progress = Progress()
    interrupt_on_hangup_or_sigterm()
    results = asyncio.run(run_bench(out, plan, progress))
    progress("report")
    write_report(out, results, machine(mode, plan, progress))
    print((out / "report.md").read_text())
    print(f"report and plots in {out.relative_to(REPO)} ({progress.elapsed_s:.0f} s)")


if __name__ == "__main__":
    main()
