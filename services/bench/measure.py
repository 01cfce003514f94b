"""How a contender is measured: one call at a time, then open loop at rates that close in on its saturation.

The rates adapt to the contender, so a run spends its minutes near where the contender gives way rather than
on a fixed grid too coarse for some and too long for others: start below what one-at-a-time calls already
sustain, grow by `factor` until a rate is not sustained, then bisect between the best sustained rate and the
first one that was not, until they are within `resolution` of each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from rich.console import Console

from services.bench.loadgen import Call, RunResult, closed_loop, open_loop
from services.bench.processes import cpu_seconds
from services.bench.results import Contender, Step, sustained

#: Progress lines of every benchmark module; no source column, which only repeats the phase.
console = Console(log_path=False)


@dataclass(frozen=True)
class SweepPlan:
    step_s: float
    """Length of each open-loop step."""
    floor_calls: int
    """Calls one at a time for the latency floor."""
    warmup_calls: int
    factor: float
    """Growth of the offered rate from one step to the next, until one is not sustained."""
    resolution: float
    """Bisection stops once the failed rate is within this factor of the sustained one."""
    start_fraction: float = 0.5
    """First rate, as a share of the rate one-at-a-time calls sustain (1 / floor p50)."""
    min_rate: float = 10.0
    max_rate: float = 4000.0
    """About what this load generator (one Python process) can send on a small machine."""
    max_steps: int = 10


def next_rate(tried: Sequence[tuple[float, bool]], plan: SweepPlan) -> float | None:
    """The rate to offer after `tried` ((rate, sustained), in order), or None when the sweep is done."""
    if not tried or len(tried) >= plan.max_steps:
        return None
    best = max((rate for rate, ok in tried if ok), default=None)
    failed = min((rate for rate, ok in tried if not ok), default=None)
    if failed is None:
        grown = tried[-1][0] * plan.factor
        return round(grown) if grown <= plan.max_rate else None
    if best is None:
        lower = failed / plan.factor
        return round(lower) if lower >= plan.min_rate else None
    if failed <= best * plan.resolution:
        return None
    return round(math.sqrt(best * failed))


def start_rate(floor_p50_ms: float, plan: SweepPlan) -> float:
    return float(max(round(plan.start_fraction * 1000 / max(floor_p50_ms, 0.01)), plan.min_rate))


async def run_step(call: Call, server: psutil.Process, rate: float, seconds: float) -> Step:
    """Open loop at `rate` for `seconds`, with the CPU `server` (and its children) spent per 1000 answers."""
    before = cpu_seconds(server)
    run = await open_loop(call, rate, seconds)
    return Step(run, (cpu_seconds(server) - before) / max(run.ok, 1) * 1000)


def log_step(name: str, step: Step) -> None:
    run = step.run
    console.log(
        f"{name}: {run.offered_rate:.0f}/s -> p50 {run.percentile_ms(50):.2f} ms, "
        f"p99 {run.percentile_ms(99):.2f} ms, {run.achieved_rate:.0f}/s done, {run.errors} errors, "
        f"CPU {step.cpu_per_1000:.2f} s/1000"
    )


async def measure_floor(name: str, call: Call, plan: SweepPlan) -> RunResult:
    """Warm up (connections, caches, the model's first batches), then one call at a time."""
    await closed_loop(call, plan.warmup_calls)
    floor = await closed_loop(call, plan.floor_calls)
    console.log(
        f"{name}: one at a time p50 {floor.percentile_ms(50):.2f} ms, "
        f"p99 {floor.percentile_ms(99):.2f} ms, {floor.errors} errors"
    )
    return floor


async def measure_contender(
    key: str, name: str, call: Call, server: psutil.Process, plan: SweepPlan
) -> Contender:
    """The contender's floor, then open-loop steps from `next_rate` until its saturation is bracketed."""
    floor = await measure_floor(name, call, plan)
    contender = Contender(key, name, floor)
    rate: float | None = start_rate(floor.percentile_ms(50), plan)
    while rate is not None:
        step = await run_step(call, server, rate, plan.step_s)
        log_step(name, step)
        contender.steps.append(step)
        rate = next_rate([(s.run.offered_rate, sustained(s.run)) for s in contender.steps], plan)
    contender.steps.sort(key=lambda s: s.run.offered_rate)
    return contender
