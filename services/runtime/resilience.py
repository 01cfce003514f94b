"""Calls to a replicated upstream (a hop) that survive a slow or failed replica within the caller's deadline.

grpcio implements neither gRPC's hedgingPolicy nor retries across a list of independent replicas, so
`HedgedCall` does both for idempotent hops: one attempt to one replica; after a delay taken from the hop's
recent latency (about the p95), a backup attempt to a *different* replica; the first answer wins and the
other attempt is cancelled. A failed race is retried (tenacity) on UNAVAILABLE or RESOURCE_EXHAUSTED only,
with jittered exponential backoff, on another replica, while the deadline allows it. Both extra loads are
capped by token buckets, so a slow or failing *fleet* does not double its own load.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import grpc
import structlog
from opentelemetry import trace
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from services.runtime import metrics, w3c
from services.runtime.errors import DeadlineExceeded, FieldViolation

log = structlog.get_logger(__name__)

#: Options of a channel to one replica's address. An address that resolves to several (a DNS name for
#: several containers) has its calls spread over all of them: gRPC's default policy, pick_first, sends every
#: call to the first that connects. A replica that went away (a restart, a crash) is tried again within a
#: second once it is back: on one host or one cluster network, gRPC's default backoff (1 s growing to 120 s)
#: would keep it out for minutes.
REPLICA_CHANNEL_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

T = TypeVar("T")
R = TypeVar("R")

HOP_CALLS = Counter(
    "scoregraph_hop_calls", "Calls the gateway made to a hop, however many attempts each took", ["hop"]
)
HOP_ATTEMPTS = Counter(
    "scoregraph_hop_attempts",
    "Attempts sent to a hop's replicas (first tries, hedges and retries), by how each ended: won, "
    "cancelled (another attempt answered first) or failed",
    ["hop", "outcome"],
)
HEDGES_SENT = Counter("scoregraph_hedges_sent", "Backup attempts sent to another replica of a hop", ["hop"])
HEDGES_WON = Counter(
    "scoregraph_hedges_won", "Backup attempts that answered before the first attempt", ["hop"]
)
HEDGE_BUDGET_EXHAUSTED = Counter(
    "scoregraph_hedge_budget_exhausted",
    "Backup attempts not sent because the hedge budget was spent",
    ["hop"],
)
RETRIES = Counter("scoregraph_retries", "Attempts repeated after a retryable failure", ["hop"])
RETRY_BUDGET_EXHAUSTED = Counter(
    "scoregraph_retry_budget_exhausted",
    "Retryable failures not retried because the retry budget was spent",
    ["hop"],
)
DEADLINE_EXCEEDED = Counter(
    "scoregraph_deadline_exceeded",
    "Hop calls that ran out of the caller's deadline, or were not started for lack of it",
    ["hop"],
)
DEGRADED_VERDICTS = Counter(
    "scoregraph_degraded_verdicts", "Verdicts answered UNCERTAIN and degraded because a hop failed", ["hop"]
)

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""UNAVAILABLE: the replica could not be reached or is draining. RESOURCE_EXHAUSTED: the replica shed the call
before doing any work (its concurrency limit). Anything else either did the work or will fail again."""

# A replica that is down, draining, or let a call run out its whole timeout (hung) gets no calls for a while.
_EJECTING_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# Span attributes of an attempt.
HOP_ATTRIBUTE = "scoregraph.hop"
ATTEMPT_ATTRIBUTE = "scoregraph.hedge.attempt"
RETRY_ATTRIBUTE = "scoregraph.retry.attempt"
OUTCOME_ATTRIBUTE = "scoregraph.hedge.outcome"
WON, CANCELLED, FAILED = "won", "cancelled", "failed"


class AttemptFailed(Exception):
    """One attempt at a hop failed with a gRPC status (the hop's client turns its own errors into this)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        replica: str = "",
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.replica = replica
        self.violations = tuple(violations)
        """The fields of the hop's request an INVALID_ARGUMENT named (its `google.rpc.BadRequest`)."""


class Budget(Protocol):
    """What remains of the caller's deadline (services.gateway.deadline.Deadline)."""

    @property
    def reserve_s(self) -> float: ...

    def remaining_s(self) -> float: ...

    def hop_timeout_s(self, hop: str) -> float:
        """Raises DeadlineExceeded when no time is left for `hop`."""
        ...


class TokenBucket:
    """Extra attempts a hop may send, in the spirit of gRPC's retryThrottling.

    Every call deposits `ratio` tokens (up to `burst`); every extra attempt takes a whole one. Over any
    stretch of traffic, extra attempts stay below `ratio` x calls + `burst`: 0.1 allows 10 % more load.
    Unlike retryThrottling it counts calls, not failures, so a fleet that is slow (not failing) is capped
    too. It starts full, so the first slow calls after start-up can be hedged.
    """

    def __init__(self, ratio: float, burst: float) -> None:
        if ratio < 0 or burst < 0:
            raise ValueError("a token bucket needs a non-negative ratio and burst")
        self._ratio = ratio
        self._burst = burst
        self._tokens = burst

    @property
    def tokens(self) -> float:
        return self._tokens

    def deposit(self) -> None:
        self._tokens = min(self._burst, self._tokens + self._ratio)

    def take(self) -> bool:
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class LatencyWindow:
    """The last `size` latencies of a hop, kept sorted for quantiles."""

    def __init__(self, size: int = 512) -> None:
        self._arrivals: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []
        self._size = size

    def __len__(self) -> int:
        return len(self._sorted)

    def record(self, seconds: float) -> None:
        self._arrivals.append(seconds)
        bisect.insort(self._sorted, seconds)
        if len(self._arrivals) > self._size:
            del self._sorted[bisect.bisect_left(self._sorted, self._arrivals.popleft())]

    def quantile(self, q: float) -> float:
        if not self._sorted:
            raise ValueError("no latency recorded yet")
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]


@dataclass(frozen=True)
class HedgePolicy:
    """When a hop sends a backup attempt, and how many it may send."""

    enabled: bool = True
    quantile: float = 0.95
    """The backup goes out once the first attempt has taken longer than this share of recent ones."""
    floor_s: float = 0.002
    """Least delay: below it, latency is noise and hedging would only add load."""
    fixed_delay_s: float | None = None
    """A fixed delay instead of the adaptive one."""
    budget: float = 0.1
    """Backup attempts per call, at most (plus `burst`)."""
    burst: float = 10.0
    min_samples: int = 20
    """Latencies needed before the adaptive delay is trusted."""
    initial_delay_s: float = 0.05
    """The delay until then: a replica that hangs from the start is still hedged around."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a hop retries a failed race: only on RETRYABLE_CODES, within the deadline and a budget."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.005
    max_backoff_s: float = 0.05
    budget: float = 0.1
    """Retries per call, at most (plus `burst`)."""
    burst: float = 10.0


@dataclass
class Replica(Generic[T]):
    """One replica of a hop, and the client (stub) that calls it."""

    address: str
    client: T
    ejected_until: float = 0.0


class ReplicaSet(Generic[T]):
    """A hop's replicas, taken in turn. An ejected replica (one that answered UNAVAILABLE or let a call time
    out) is passed over for `ejection_s`, unless no other replica is left."""

    def __init__(
        self,
        replicas: Sequence[Replica[T]],
        *,
        ejection_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica is required")
        self.replicas = tuple(replicas)
        self._ejection_s = ejection_s
        self._clock = clock
        self._turns = itertools.count()

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, avoid: Collection[str] = (), *, allow_ejected: bool = True) -> Replica[T] | None:
        """The next replica in turn that is neither in `avoid` nor ejected; failing that, the next not in
        `avoid` (when `allow_ejected`); failing that, the next in turn. None only without `allow_ejected`."""
        start = next(self._turns)
        order = [self.replicas[(start + i) % len(self.replicas)] for i in range(len(self.replicas))]
        now = self._clock()
        for replica in order:
            if replica.address not in avoid and replica.ejected_until <= now:
                return replica
        if not allow_ejected:
            return None
        return next((replica for replica in order if replica.address not in avoid), order[0])

    def eject(self, replica: Replica[T]) -> None:
        replica.ejected_until = self._clock() + self._ejection_s


Attempt = Callable[[T, float, dict[str, str]], Awaitable[R]]
"""Calls one replica's client with a timeout (seconds) and the attempt's trace headers; raises
AttemptFailed when the replica answers an error."""


async def _any_done_within(tasks: Sequence[asyncio.Task], until: float) -> bool:
    """Whether any of `tasks` is done by `until` (`time.perf_counter`), waiting until then at most.

    The event loop's timer alone could end the wait early: uvloop's count whole milliseconds (a delay is
    rounded to the nearest) from the time its current iteration began, so a hedge delay of 2.4 ms ended
    after 1.3-1.7 ms in a gateway, and a third of the features calls and half the postprocess calls had
    their hedge delay run out, against the 5 % the p95 means; the hedge budget then went on them, with
    none left for a replica that was slow. So the time is read on the clock the delay is measured with,
    and what is left waited out, each wait rounded up to a whole millisecond.
    """
    while (left := until - time.perf_counter()) > 0:
        done, _ = await asyncio.wait(tasks, timeout=math.ceil(left * 1000) / 1000)
        if done:
            return True
    return any(task.done() for task in tasks)


@dataclass
class _Race:
    retry: int = 1
    """Which try at the hop this race is: 1 the first, 2 and up the retries."""
    winner: int | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    """The replica each task calls."""
    timed_out: bool = False
    """The race outlived the hop's timeout: attempts still out are failures, not losers."""


class HedgedCall(Generic[T]):
    """Calls one hop (an idempotent read) over its replicas: hedged, retried, within the caller's deadline.

    Each attempt is a client span of its own, a sibling of the others under the caller's current span, named
    `<hop> attempt` and marked won, cancelled or failed, with the RPC conventions' attributes when `rpc` names
    the gRPC service and method called; its trace context goes out in the attempt's headers.
    """

    def __init__(
        self,
        hop: str,
        replicas: ReplicaSet[T],
        *,
        hedge: HedgePolicy = HedgePolicy(),
        retry: RetryPolicy = RetryPolicy(),
        tracer: trace.Tracer | None = None,
        rpc: tuple[str, str] | None = None,
    ) -> None:
        self.hop = hop
        self.replicas = replicas
        self.hedge_policy = hedge
        self.retry_policy = retry
        self.latencies = LatencyWindow()
        self.hedge_budget = TokenBucket(hedge.budget, hedge.burst)
        self.retry_budget = TokenBucket(retry.budget, retry.burst)
        self._tracer = tracer or trace.get_tracer(__name__)
        self._rpc_attributes: dict[str, str] = {HOP_ATTRIBUTE: hop}
        if rpc is not None:
            self._rpc_attributes.update({"rpc.system": "grpc", "rpc.service": rpc[0], "rpc.method": rpc[1]})

    def hedge_delay_s(self) -> float | None:
        """How long the first attempt runs alone; None: no backup attempt."""
        policy = self.hedge_policy
        if not policy.enabled or len(self.replicas) < 2:
            return None
        if policy.fixed_delay_s is not None:
            return policy.fixed_delay_s
        if len(self.latencies) < policy.min_samples:
            return max(policy.floor_s, policy.initial_delay_s)
        return max(policy.floor_s, self.latencies.quantile(policy.quantile))

    async def __call__(self, attempt: Attempt[T, R], deadline: Budget) -> R:
        """The first answer of `attempt` on any replica; raises the last AttemptFailed when none answers,
        or DeadlineExceeded when no time is left to start."""
        HOP_CALLS.labels(self.hop).inc()
        self.hedge_budget.deposit()
        self.retry_budget.deposit()
        failed_replicas: set[str] = set()
        last_failure: AttemptFailed | None = None
        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda error: isinstance(error, AttemptFailed) and error.code in RETRYABLE_CODES
            ),
            wait=wait_random_exponential(
                multiplier=self.retry_policy.initial_backoff_s, max=self.retry_policy.max_backoff_s
            ),
            stop=lambda state: self._stop_retrying(state, deadline),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt_state in retrying:
                with attempt_state:
                    race = _Race(retry=attempt_state.retry_state.attempt_number)
                    try:
                        return await self._race(race, attempt, deadline, failed_replicas)
                    except AttemptFailed as failure:
                        last_failure = failure
                        raise
        except AttemptFailed as failure:
            if failure.code is grpc.StatusCode.DEADLINE_EXCEEDED:
                DEADLINE_EXCEEDED.labels(self.hop).inc()
            raise
        except DeadlineExceeded:
            DEADLINE_EXCEEDED.labels(self.hop).inc()
            if last_failure is not None:
                # The backoff before a retry outlasted the deadline (the wait overran its plan): the hop
                # failed as its last attempt did, not for want of time to start.
                raise last_failure from None
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _stop_retrying(self, state: RetryCallState, deadline: Budget) -> bool:
        if state.attempt_number >= self.retry_policy.max_attempts:
            return True
        # A retry that would start with no time beyond the reserve could only fail DEADLINE_EXCEEDED.
        if deadline.remaining_s() - state.upcoming_sleep <= deadline.reserve_s:
            return True
        if not self.retry_budget.take():
            RETRY_BUDGET_EXHAUSTED.labels(self.hop).inc()
            return True
        return False

    def _count_retry(self, state: RetryCallState) -> None:
        RETRIES.labels(self.hop).inc()
        failure = state.outcome.exception() if state.outcome else None
        # At debug: the call's own line (`scored`, `request failed`) is its one at info, and the retry is in
        # its trace (an attempt span) and in the retries counter.
        log.debug(
            "retrying",
            hop=self.hop,
            attempt=state.attempt_number,
            code=failure.code.name if isinstance(failure, AttemptFailed) else None,
            reason=failure.message if isinstance(failure, AttemptFailed) else str(failure),
        )

    async def _race(
        self, race: _Race, attempt: Attempt[T, R], deadline: Budget, failed_replicas: set[str]
    ) -> R:
        timeout_s = deadline.hop_timeout_s(self.hop)
        primary = self.replicas.pick(failed_replicas)
        assert primary is not None
        # The hop's timeout is kept here too, not only by gRPC's deadline: under load an expired call's
        # status can reach the event loop tens of ms late, and the caller's budget has no room for that.
        expires_at = asyncio.get_running_loop().time() + timeout_s
        started = self._start(race, attempt, primary, timeout_s, failed_replicas)
        try:
            async with asyncio.timeout_at(expires_at):
                delay = self.hedge_delay_s()
                hedge = delay is not None and delay < timeout_s
                if hedge and not await _any_done_within(race.tasks, started + delay):
                    avoid = {*failed_replicas, primary.address}
                    self._hedge(race, attempt, deadline, avoid, failed_replicas)
                return await self._first_answer(race)
        except TimeoutError:
            race.timed_out = True
            for task, replica in zip(race.tasks, race.replicas, strict=True):
                if not task.done():
                    # As for an attempt that ran out its deadline: the replica is ejected for a while.
                    failed_replicas.add(replica.address)
                    self.replicas.eject(replica)
            raise AttemptFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer from {self.hop} within its {timeout_s * 1000:.0f} ms",
                replica=race.replicas[0].address,
            ) from None
        finally:
            for task in race.tasks:
                task.cancel()
            # The cancelled attempts' RPCs are cancelled and their spans ended before the answer goes on;
            # failures no one waited for are collected here.
            await asyncio.gather(*race.tasks, return_exceptions=True)

    def _hedge(
        self,
        race: _Race,
        attempt: Attempt[T, R],
        deadline: Budget,
        avoid: set[str],
        failed_replicas: set[str],
    ) -> None:
        backup = self.replicas.pick(avoid, allow_ejected=False)
        if backup is None:
            return
        if not self.hedge_budget.take():
            HEDGE_BUDGET_EXHAUSTED.labels(self.hop).inc()
            return
        try:
            timeout_s = deadline.hop_timeout_s(self.hop)
        except DeadlineExceeded:
            return
        HEDGES_SENT.labels(self.hop).inc()
        self._start(race, attempt, backup, timeout_s, failed_replicas)

    async def _first_answer(self, race: _Race) -> R:
        pending = set(race.tasks)
        last_failure: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    if race.tasks.index(task) == race.winner:
                        return task.result()
                    continue
                if not isinstance(error, AttemptFailed) or error.code is grpc.StatusCode.INVALID_ARGUMENT:
                    # The request itself is wrong (or the client is): every replica would say the same.
                    raise error
                last_failure = error
        assert last_failure is not None
        raise last_failure

    def _start(
        self,
        race: _Race,
        attempt: Attempt[T, R],
        replica: Replica[T],
        timeout_s: float,
        failed_replicas: set[str],
    ) -> float:
        """Start an attempt on `replica`; when it started (`time.perf_counter`), which its latency is
        counted from, as the race counts the hedge delay: from before its task first runs."""
        started = time.perf_counter()
        number = len(race.tasks)
        race.replicas.append(replica)
        race.tasks.append(
            asyncio.create_task(
                self._attempt(race, number, attempt, replica, timeout_s, failed_replicas, started)
            )
        )
        return started

    async def _attempt(
        self,
        race: _Race,
        number: int,
        attempt: Attempt[T, R],
        replica: Replica[T],
        timeout_s: float,
        failed_replicas: set[str],
        started: float,
    ) -> R:
        host, _, port = replica.address.rpartition(":")
        attributes = {
            **self._rpc_attributes,
            ATTEMPT_ATTRIBUTE: number + 1,
            RETRY_ATTRIBUTE: race.retry,
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
        }
        # The task runs in a copy of the caller's context: its span is a sibling of the other attempts'.
        with self._tracer.start_as_current_span(
            f"{self.hop} attempt", kind=trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            headers: dict[str, str] = {}
            w3c.inject(headers)
            try:
                result = await attempt(replica.client, timeout_s, headers)
            except asyncio.CancelledError:
                if race.timed_out:
                    span.set_status(
                        trace.Status(trace.StatusCode.ERROR, grpc.StatusCode.DEADLINE_EXCEEDED.name)
                    )
                    self._finish(span, FAILED, grpc.StatusCode.DEADLINE_EXCEEDED, started)
                else:
                    self._finish(span, CANCELLED, grpc.StatusCode.CANCELLED, started)
                raise
            except AttemptFailed as failure:
                failure.replica = replica.address
                failed_replicas.add(replica.address)
                if failure.code in _EJECTING_CODES:
                    self.replicas.eject(replica)
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.code.name))
                self._finish(span, FAILED, failure.code, started)
                raise
            except BaseException:
                self._finish(span, FAILED, grpc.StatusCode.UNKNOWN, started)
                raise
            self.latencies.record(time.perf_counter() - started)
            if race.winner is None:
                race.winner = number
                self._finish(span, WON, grpc.StatusCode.OK, started)
                if number > 0:
                    HEDGES_WON.labels(self.hop).inc()
            else:
                # Answered in the same instant as the winner: its answer is dropped as if cancelled.
                self._finish(span, CANCELLED, grpc.StatusCode.OK, started)
            return result

    def _finish(self, span: trace.Span, outcome: str, code: grpc.StatusCode, started: float) -> None:
        """Record how an attempt ended: its span's outcome, the attempt counts, and the hop's RED metrics
        (`code` is what the replica answered; CANCELLED when the attempt lost the race, DEADLINE_EXCEEDED
        when the call's deadline passed first)."""
        span.set_attribute(OUTCOME_ATTRIBUTE, outcome)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        HOP_ATTEMPTS.labels(self.hop, outcome).inc()
        metrics.observe_upstream_call(self.hop, code.name, time.perf_counter() - started)
