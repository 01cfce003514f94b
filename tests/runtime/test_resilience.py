"""HedgedCall over scripted replicas (coroutines, no sockets): hedging, retries, budgets, cancellation."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
import uvloop
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.gateway.deadline import Deadline
from services.runtime.errors import DeadlineExceeded
from services.runtime.resilience import (
    AttemptFailed,
    HedgedCall,
    HedgePolicy,
    LatencyWindow,
    Replica,
    ReplicaSet,
    RetryPolicy,
    TokenBucket,
)

Behavior = Callable[[], Awaitable[str]]
DEFAULT_HEDGE, DEFAULT_RETRY = HedgePolicy(), RetryPolicy()


@dataclass
class ScriptedReplica:
    """A replica whose every call runs `behavior`; records calls and cancellations."""

    name: str
    behavior: Behavior
    calls: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0

    async def __call__(self, timeout_s: float, headers: dict[str, str]) -> str:
        self.calls.append(headers)
        try:
            return await asyncio.wait_for(self.behavior(), timeout_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except TimeoutError:
            raise AttemptFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "timed out") from None


async def call_replica(replica: ScriptedReplica, timeout_s: float, headers: dict[str, str]) -> str:
    return await replica(timeout_s, headers)


def answers(value: str, after_s: float = 0.0) -> Behavior:
    async def behavior() -> str:
        await asyncio.sleep(after_s)
        return value

    return behavior


def fails(code: grpc.StatusCode, after_s: float = 0.0) -> Behavior:
    async def behavior() -> str:
        await asyncio.sleep(after_s)
        raise AttemptFailed(code, f"scripted {code.name}")

    return behavior


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def hedged(spans) -> Callable[..., HedgedCall]:
    """A HedgedCall over the given replicas, named after a fresh hop so metric counts start at zero."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    hops = iter(range(10**6))

    def make(*replicas: ScriptedReplica, hedge=DEFAULT_HEDGE, retry=DEFAULT_RETRY, ejection_s=0.5):
        members = ReplicaSet([Replica(r.name, r) for r in replicas], ejection_s=ejection_s)
        hop = f"hop{time.monotonic_ns()}{next(hops)}"
        return HedgedCall(hop, members, hedge=hedge, retry=retry, tracer=provider.get_tracer("test"))

    return make


def metric(name: str, hop: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"scoregraph_{name}_total", {"hop": hop, **labels}) or 0.0


def deadline(budget_s: float = 2.0, reserve_s: float = 0.001) -> Deadline:
    return Deadline(budget_s, reserve_s=reserve_s)


FIXED_20MS = HedgePolicy(fixed_delay_s=0.02)


# --- token bucket, latency window, delay -------------------------------------------------------------------


def test_the_bucket_allows_ratio_times_calls_plus_the_burst() -> None:
    bucket = TokenBucket(ratio=0.1, burst=2)
    taken = 0
    for _ in range(100):
        bucket.deposit()
        taken += bucket.take()
    assert taken == 2 + 10 - 1  # the burst, then one per ten calls (the last not yet earned)


def test_an_empty_bucket_refuses_until_refilled() -> None:
    bucket = TokenBucket(ratio=0.5, burst=1)
    assert bucket.take()
    assert not bucket.take()
    bucket.deposit()
    assert not bucket.take()
    bucket.deposit()
    assert bucket.take()


def test_the_latency_window_forgets_old_latencies() -> None:
    window = LatencyWindow(size=100)
    for _ in range(100):
        window.record(1.0)
    assert window.quantile(0.95) == 1.0
    for i in range(100):
        window.record(i / 1000)
    assert len(window) == 100
    assert window.quantile(0.95) == pytest.approx(0.095)
    assert window.quantile(0.5) == pytest.approx(0.050)


def test_the_delay_follows_recent_latency_above_a_floor(hedged) -> None:
    call = hedged(
        ScriptedReplica("a", answers("a")),
        ScriptedReplica("b", answers("b")),
        hedge=HedgePolicy(quantile=0.9, floor_s=0.005, min_samples=10, initial_delay_s=0.05),
    )
    for _ in range(9):
        call.latencies.record(0.030)
    assert call.hedge_delay_s() == 0.05  # too few latencies to trust

    call.latencies.record(0.030)
    assert call.hedge_delay_s() == pytest.approx(0.030)

    for _ in range(100):
        call.latencies.record(0.001)
    assert call.hedge_delay_s() == pytest.approx(0.005)  # the floor


def test_a_fixed_delay_replaces_the_adaptive_one_and_hedging_can_be_off(hedged) -> None:
    pair = (ScriptedReplica("a", answers("a")), ScriptedReplica("b", answers("b")))
    assert hedged(*pair, hedge=HedgePolicy(fixed_delay_s=0.04)).hedge_delay_s() == 0.04
    assert hedged(*pair, hedge=HedgePolicy(enabled=False, fixed_delay_s=0.04)).hedge_delay_s() is None
    assert hedged(pair[0], hedge=HedgePolicy(fixed_delay_s=0.04)).hedge_delay_s() is None


# --- hedging -----------------------------------------------------------------------------------------------


async def test_a_slow_first_attempt_is_hedged_to_another_replica_which_wins(hedged, spans) -> None:
    slow, fast = (
        ScriptedReplica("slow", answers("slow", after_s=1.0)),
        ScriptedReplica("fast", answers("fast")),
    )
    call = hedged(slow, fast, hedge=FIXED_20MS)

    started = time.monotonic()
    assert await call(call_replica, deadline()) == "fast"

    assert 0.02 <= time.monotonic() - started < 0.5
    assert (len(slow.calls), len(fast.calls), slow.cancelled) == (1, 1, 1)
    assert metric("hedges_sent", call.hop) == metric("hedges_won", call.hop) == 1
    attempts = sorted(spans.get_finished_spans(), key=lambda s: s.attributes["scoregraph.hedge.attempt"])
    assert [
        (
            s.name,
            s.attributes["scoregraph.hedge.attempt"],
            s.attributes["scoregraph.retry.attempt"],
            s.attributes["scoregraph.hedge.outcome"],
            s.attributes["server.address"],
        )
        for s in attempts
    ] == [
        (f"{call.hop} attempt", 1, 1, "cancelled", ""),
        (f"{call.hop} attempt", 2, 1, "won", ""),
    ]
    assert attempts[0].parent == attempts[1].parent  # siblings
    # Each attempt carries its own span's context.
    for span, replica in zip(attempts, (slow, fast), strict=True):
        assert f"{span.context.span_id:016x}" in replica.calls[0]["traceparent"]


async def test_a_fast_first_attempt_sends_no_hedge(hedged) -> None:
    a, b = ScriptedReplica("a", answers("a")), ScriptedReplica("b", answers("b"))
    call = hedged(a, b, hedge=FIXED_20MS)

    for _ in range(10):
        await call(call_replica, deadline())

    assert (len(a.calls), len(b.calls)) == (5, 5)  # taken in turn
    assert metric("hedges_sent", call.hop) == 0
    assert metric("hop_attempts", call.hop, outcome="won") == 10


def test_no_hedge_leaves_before_its_delay_on_uvloop(hedged) -> None:
    # uvloop, which the services run on, rounds a timer to whole milliseconds (2.4 -> 2) and counts it from
    # the start of the loop's iteration: its timer alone would send this hedge after 2 ms or less.
    delay_s = 0.0024
    backup_started: list[float] = []

    async def backup() -> str:
        backup_started.append(time.perf_counter())
        return "b"

    first = ScriptedReplica("first", answers("first", after_s=0.05))
    second = ScriptedReplica("second", backup)
    call = hedged(first, second, hedge=HedgePolicy(fixed_delay_s=delay_s))

    async def race() -> float:
        # Each race starts in an iteration already under way (this coroutine's), as a gateway's do.
        await asyncio.sleep(0)
        time.sleep(0.0015)
        began = time.perf_counter()
        assert await call(call_replica, deadline()) == "b"
        return backup_started[-1] - began

    async def races() -> list[float]:
        waits = []
        for _ in range(10):
            call.replicas = ReplicaSet([Replica("first", first), Replica("second", second)], ejection_s=0.5)
            waits.append(await race())
        return waits

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        waits = runner.run(races())

    assert len(waits) == 10
    assert min(waits) >= delay_s
    assert metric("hedges_sent", call.hop) == metric("hedges_won", call.hop) == 10


async def test_the_first_attempt_wins_when_it_answers_before_the_hedge(hedged) -> None:
    first = ScriptedReplica("first", answers("first", after_s=0.05))
    second = ScriptedReplica("second", answers("second", after_s=1.0))
    call = hedged(first, second, hedge=FIXED_20MS)

    assert await call(call_replica, deadline()) == "first"

    assert second.cancelled == 1
    assert metric("hedges_sent", call.hop) == 1 and metric("hedges_won", call.hop) == 0


async def test_hedges_stop_when_the_budget_is_spent(hedged) -> None:
    slow_a = ScriptedReplica("a", answers("a", after_s=0.03))
    slow_b = ScriptedReplica("b", answers("b", after_s=0.03))
    call = hedged(slow_a, slow_b, hedge=HedgePolicy(fixed_delay_s=0.005, budget=0.0, burst=2))

    for _ in range(5):
        await call(call_replica, deadline())

    assert metric("hedges_sent", call.hop) == 2
    assert metric("hedge_budget_exhausted", call.hop) == 3
    assert len(slow_a.calls) + len(slow_b.calls) == 7


def red(hop: str, code: str) -> tuple[float, float, float]:
    """The hop's RED metrics for `code`: attempts counted, attempts timed, seconds timed."""
    labels = {"hop": hop, "grpc_code": code}
    return tuple(
        REGISTRY.get_sample_value(f"scoregraph_upstream_{name}", labels) or 0.0
        for name in ("requests_total", "duration_seconds_count", "duration_seconds_sum")
    )


async def test_every_attempt_is_counted_and_timed_by_the_status_it_ended_with(hedged) -> None:
    # A hedged call: the first attempt is cancelled when the hedge answers.
    slow, fast = (
        ScriptedReplica("slow", answers("slow", after_s=1.0)),
        ScriptedReplica("fast", answers("fast")),
    )
    call = hedged(slow, fast, hedge=FIXED_20MS)
    assert await call(call_replica, deadline()) == "fast"

    ok, cancelled = red(call.hop, "OK"), red(call.hop, "CANCELLED")
    assert ok[:2] == cancelled[:2] == (1, 1)
    assert cancelled[2] >= 0.02 > ok[2]  # the first attempt ran until the hedge won

    # A failed hedge beside an answer.
    late, broken = (
        ScriptedReplica("late", answers("late", after_s=0.06)),
        ScriptedReplica("broken", fails(grpc.StatusCode.UNAVAILABLE)),
    )
    call = hedged(late, broken, hedge=FIXED_20MS)
    assert await call(call_replica, deadline()) == "late"

    assert red(call.hop, "OK")[:2] == red(call.hop, "UNAVAILABLE")[:2] == (1, 1)


async def test_the_extra_load_stays_within_the_budget_when_every_call_is_slow(hedged) -> None:
    a = ScriptedReplica("a", answers("a", after_s=0.004))
    b = ScriptedReplica("b", answers("b", after_s=0.004))
    call = hedged(a, b, hedge=HedgePolicy(fixed_delay_s=0.001, budget=0.1, burst=1))

    for _ in range(50):
        await call(call_replica, deadline())

    extra = len(a.calls) + len(b.calls) - 50
    assert extra <= 0.1 * 50 + 1


async def test_a_hedge_that_fails_leaves_the_first_attempt_to_answer(hedged) -> None:
    slow = ScriptedReplica("slow", answers("slow", after_s=0.06))
    broken = ScriptedReplica("broken", fails(grpc.StatusCode.UNAVAILABLE))
    call = hedged(slow, broken, hedge=FIXED_20MS)

    assert await call(call_replica, deadline()) == "slow"
    assert metric("hop_attempts", call.hop, outcome="failed") == 1


# --- retries -----------------------------------------------------------------------------------------------


async def test_unavailable_is_retried_on_another_replica(hedged) -> None:
    down, up = (
        ScriptedReplica("down", fails(grpc.StatusCode.UNAVAILABLE)),
        ScriptedReplica("up", answers("up")),
    )
    call = hedged(down, up, hedge=HedgePolicy(enabled=False))

    assert await call(call_replica, deadline()) == "up"

    assert (len(down.calls), len(up.calls)) == (1, 1)
    assert metric("retries", call.hop) == 1


async def test_a_retry_is_logged_at_debug_the_calls_one_info_line_being_its_callers(
    hedged, json_logs
) -> None:
    down, up = (
        ScriptedReplica("down", fails(grpc.StatusCode.UNAVAILABLE)),
        ScriptedReplica("up", answers("up")),
    )
    call = hedged(down, up, hedge=HedgePolicy(enabled=False))

    assert await call(call_replica, deadline()) == "up"

    # Before, an info line of its own: a retried call had two per service.
    records = json_logs.records()
    assert [(r["level"], r["code"]) for r in records if r["event"] == "retrying"] == [
        ("debug", "UNAVAILABLE")
    ]
    assert [r["event"] for r in records if r["level"] != "debug"] == []


async def test_a_replica_that_answered_unavailable_is_passed_over_for_a_while(hedged) -> None:
    down, up = (
        ScriptedReplica("down", fails(grpc.StatusCode.UNAVAILABLE)),
        ScriptedReplica("up", answers("up")),
    )
    call = hedged(down, up, hedge=HedgePolicy(enabled=False), ejection_s=60)

    for _ in range(10):
        await call(call_replica, deadline())

    assert len(down.calls) == 1 and len(up.calls) == 10


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    ],
)
async def test_other_codes_are_never_retried(hedged, code: grpc.StatusCode) -> None:
    a, b = ScriptedReplica("a", fails(code)), ScriptedReplica("b", fails(code))
    call = hedged(a, b, hedge=FIXED_20MS)

    with pytest.raises(AttemptFailed) as raised:
        await call(call_replica, deadline())

    assert raised.value.code is code
    assert len(a.calls) + len(b.calls) == 1
    assert metric("retries", call.hop) == metric("hedges_sent", call.hop) == 0


async def test_invalid_argument_ends_a_race_at_once(hedged) -> None:
    rejecting = ScriptedReplica("rejecting", fails(grpc.StatusCode.INVALID_ARGUMENT, after_s=0.04))
    slow = ScriptedReplica("slow", answers("slow", after_s=1.0))
    call = hedged(rejecting, slow, hedge=FIXED_20MS)

    with pytest.raises(AttemptFailed):
        await call(call_replica, deadline())

    assert slow.cancelled == 1
    assert metric("retries", call.hop) == 0


async def test_resource_exhausted_is_retried(hedged) -> None:
    shedding = ScriptedReplica("shedding", fails(grpc.StatusCode.RESOURCE_EXHAUSTED))
    call = hedged(shedding, ScriptedReplica("ok", answers("ok")), hedge=HedgePolicy(enabled=False))

    assert await call(call_replica, deadline()) == "ok"


async def test_retries_stop_after_max_attempts(hedged) -> None:
    down = [ScriptedReplica(name, fails(grpc.StatusCode.UNAVAILABLE)) for name in "abcd"]
    call = hedged(*down, hedge=HedgePolicy(enabled=False), retry=RetryPolicy(max_attempts=3))

    with pytest.raises(AttemptFailed):
        await call(call_replica, deadline())

    assert sum(len(r.calls) for r in down) == 3
    assert sorted(len(r.calls) for r in down) == [0, 1, 1, 1]  # each retry elsewhere


async def test_each_retry_is_an_attempt_span_numbered_by_its_try(hedged, spans) -> None:
    flaky = ScriptedReplica("flaky", fails(grpc.StatusCode.UNAVAILABLE))
    call = hedged(flaky, ScriptedReplica("ok", answers("ok")), hedge=HedgePolicy(enabled=False))

    assert await call(call_replica, deadline()) == "ok"

    attempts = sorted(spans.get_finished_spans(), key=lambda s: s.attributes["scoregraph.retry.attempt"])
    assert [
        (
            s.attributes["scoregraph.retry.attempt"],
            s.attributes["scoregraph.hedge.attempt"],
            s.attributes["scoregraph.hedge.outcome"],
        )
        for s in attempts
    ] == [(1, 1, "failed"), (2, 1, "won")]


async def test_retries_stop_when_the_budget_is_spent(hedged) -> None:
    down = [ScriptedReplica(name, fails(grpc.StatusCode.UNAVAILABLE)) for name in "ab"]
    call = hedged(*down, hedge=HedgePolicy(enabled=False), retry=RetryPolicy(budget=0.0, burst=1))

    for _ in range(3):
        with pytest.raises(AttemptFailed):
            await call(call_replica, deadline())

    assert sum(len(r.calls) for r in down) == 4
    assert metric("retries", call.hop) == 1
    assert metric("retry_budget_exhausted", call.hop) == 3


async def test_retries_never_run_past_the_deadline(hedged) -> None:
    down = [ScriptedReplica(name, fails(grpc.StatusCode.UNAVAILABLE)) for name in "ab"]
    slow_backoff = RetryPolicy(max_attempts=10, initial_backoff_s=0.2, max_backoff_s=0.2)
    call = hedged(*down, hedge=HedgePolicy(enabled=False), retry=slow_backoff)

    started = time.monotonic()
    with pytest.raises(AttemptFailed):
        await call(call_replica, deadline(0.05))

    # Not the 0.2 s backoff: over by less than it (this machine stalls tens of milliseconds now and then).
    assert time.monotonic() - started < 0.15


class RunsOutAfterFirstStart(Deadline):
    """A deadline that passes between the first attempt and the retry (a backoff that overran its plan)."""

    def __init__(self) -> None:
        super().__init__(2.0, reserve_s=0.001)
        self.starts = 0

    def hop_timeout_s(self, hop: str) -> float:
        self.starts += 1
        if self.starts > 1:
            raise DeadlineExceeded(f"deadline too short: 0.0 ms left, {hop} not called")
        return super().hop_timeout_s(hop)


async def test_a_deadline_that_passes_during_the_backoff_fails_the_hop_as_its_last_attempt_did(
    hedged,
) -> None:
    down = [ScriptedReplica(name, fails(grpc.StatusCode.UNAVAILABLE)) for name in "ab"]
    call = hedged(*down, hedge=HedgePolicy(enabled=False))

    with pytest.raises(AttemptFailed) as failure:
        await call(call_replica, RunsOutAfterFirstStart())

    assert failure.value.code is grpc.StatusCode.UNAVAILABLE
    assert sum(len(r.calls) for r in down) == 1
    assert metric("deadline_exceeded", call.hop) == 1


@dataclass
class LateDeadlineReplica:
    """A replica whose client reports its deadline a second late (a loaded gRPC client can be tens of ms
    late): it ignores the timeout it is given and fails only after `late_by_s`."""

    name: str
    late_by_s: float = 1.0
    calls: int = 0

    async def __call__(self, timeout_s: float, headers: dict[str, str]) -> str:
        self.calls += 1
        await asyncio.sleep(timeout_s + self.late_by_s)
        raise AttemptFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


async def test_the_hops_timeout_holds_even_when_the_clients_deadline_fires_late(hedged, spans) -> None:
    late, healthy = LateDeadlineReplica("late"), ScriptedReplica("healthy", answers("ok"))
    call = hedged(late, healthy, hedge=HedgePolicy(enabled=False))

    started = time.monotonic()
    with pytest.raises(AttemptFailed) as failure:
        await call(call_replica, deadline(0.1, reserve_s=0.02))

    # The 80 ms the hop had (and some slack for a loaded test machine), not the 1.08 s its client took.
    assert time.monotonic() - started < 0.5
    assert failure.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert metric("deadline_exceeded", call.hop) == 1
    [attempt] = spans.get_finished_spans()
    assert attempt.attributes["scoregraph.hedge.outcome"] == "failed"
    # Like a replica that let a call run out its deadline, it is passed over for a while.
    assert call.replicas.pick() is call.replicas.replicas[1]
    assert call.replicas.pick() is call.replicas.replicas[1]


async def test_no_attempt_starts_without_time_beyond_the_reserve(hedged) -> None:
    replica = ScriptedReplica("a", answers("a"))
    call = hedged(replica)

    with pytest.raises(DeadlineExceeded):
        await call(call_replica, deadline(0.001, reserve_s=0.002))

    assert replica.calls == []
    assert metric("deadline_exceeded", call.hop) == 1


async def test_a_cancelled_call_cancels_every_attempt(hedged) -> None:
    a = ScriptedReplica("a", answers("a", after_s=10))
    b = ScriptedReplica("b", answers("b", after_s=10))
    call = hedged(a, b, hedge=HedgePolicy(fixed_delay_s=0.01))
    task = asyncio.create_task(call(call_replica, deadline(20)))
    await asyncio.sleep(0.05)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert (a.cancelled, b.cancelled) == (1, 1)
