"""Open-loop load: requests leave on a fixed schedule whatever the server does, and latency is measured from
each request's *intended* send time, so a server that falls behind shows its queueing instead of hiding it
(coordinated omission). Latencies go into an HdrHistogram (microseconds, 3 significant digits).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

#: One minute in microseconds: a request slower than that is recorded as a minute.
MAX_LATENCY_US = 60_000_000

Call = Callable[[int], Awaitable[object]]
"""Sends request number i and waits for its answer; an exception counts as an error."""


@dataclass
class RunResult:
    offered_rate: float
    duration_s: float
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, MAX_LATENCY_US, 3))
    sent: int = 0
    ok: int = 0
    errors: int = 0
    #: Requests never sent because too many were outstanding: the server was far behind.
    dropped: int = 0
    #: Closed loop: the offered rate is the rate answered.
    closed: bool = False

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, percentile: float) -> float:
        return self.histogram.get_value_at_percentile(percentile) / 1000.0

    @property
    def max_ms(self) -> float:
        return self.histogram.get_max_value() / 1000.0


async def open_loop(
    call: Call,
    rate: float,
    duration_s: float,
    *,
    max_outstanding: int = 2000,
) -> RunResult:
    """Send `call(i)` at `rate` per second for `duration_s`; a call that raises counts as an error."""
    result = RunResult(rate, duration_s)
    outstanding: set[asyncio.Task] = set()
    interval = 1.0 / rate
    total = int(rate * duration_s)
    start = time.perf_counter()

    async def one(i: int, intended: float) -> None:
        try:
            await call(i)
        except Exception:
            result.errors += 1
            return
        finally:
            latency_us = int((time.perf_counter() - intended) * 1e6)
            result.histogram.record_value(min(max(latency_us, 1), MAX_LATENCY_US))
        result.ok += 1

    for i in range(total):
        intended = start + i * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(outstanding) >= max_outstanding:
            result.dropped += 1
            continue
        task = asyncio.create_task(one(i, intended))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
        result.sent += 1
    if outstanding:
        await asyncio.wait(outstanding)
    result.duration_s = time.perf_counter() - start
    return result


async def closed_loop(
    call: Call,
    count: int | None = None,
    *,
    seconds: float | None = None,
    concurrency: int = 1,
) -> RunResult:
    """`concurrency` callers, each sending its next call as soon as its last one is answered, until `count`
    calls in all or `seconds` have passed. One caller measures the latency floor, with nothing queued; many
    measure the throughput at saturation, which an open loop can only bracket between two rates."""
    if count is None and seconds is None:
        raise ValueError("closed_loop needs a count or a duration")
    result = RunResult(0.0, 0.0, closed=True)
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else float("inf")
    next_call = 0

    async def caller() -> None:
        nonlocal next_call
        while (count is None or next_call < count) and time.perf_counter() < stop_at:
            i, next_call = next_call, next_call + 1
            sent = time.perf_counter()
            try:
                await call(i)
            except Exception:
                result.errors += 1
                continue
            result.histogram.record_value(
                min(max(int((time.perf_counter() - sent) * 1e6), 1), MAX_LATENCY_US)
            )
            result.ok += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.sent = next_call
    result.duration_s = time.perf_counter() - start
    result.offered_rate = result.ok / result.duration_s
    return result


def merged(runs: Sequence[RunResult]) -> RunResult:
    """One run made of several of the same kind: histograms added, counts and durations summed. The offered
    rate is the first run's for open-loop runs (each slice offers the same rate) and the rate answered for
    closed-loop ones."""
    if not runs:
        raise ValueError("nothing to merge")
    closed = runs[0].closed
    if any(run.closed != closed for run in runs):
        raise ValueError("cannot merge open-loop and closed-loop runs")
    result = RunResult(runs[0].offered_rate, sum(run.duration_s for run in runs), closed=closed)
    for run in runs:
        result.histogram.add(run.histogram)
        result.sent += run.sent
        result.ok += run.ok
        result.errors += run.errors
        result.dropped += run.dropped
    if closed:
        result.offered_rate = result.achieved_rate
    return result


Slice = Callable[[], Awaitable[RunResult]]
"""Runs one slice of a measurement (an open or closed loop of a few seconds) against one contender."""


async def interleaved(
    slices: Mapping[str, Slice], rounds: int, *, pause_s: float = 0.0
) -> dict[str, list[RunResult]]:
    """Run each contender's slice `rounds` times, taking the contenders in turn (the order rotating each
    round); each contender's slices, in order (`merged` makes one run of them).

    Two modes measured one after the other on this kind of machine see different neighbours: the same bare
    gRPC echo at 40 calls/s gave p99 7 ms in one 8 s run and 67 ms in the next. Taken in turns of a few
    seconds they share whatever the machine does, so their ratio is the modes' and not the minute's.
    `pause_s` separates slices, for what a contender leaves behind (spans still to export) to settle
    before the next one is measured."""
    keys = list(slices)
    parts: dict[str, list[RunResult]] = {key: [] for key in keys}
    order = [
        key for round_ in range(rounds) for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
    ]
    for i, key in enumerate(order):
        if i and pause_s:
            await asyncio.sleep(pause_s)
        parts[key].append(await slices[key]())
    return parts
