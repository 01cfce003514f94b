"""What one `make bench` run measured, as plain data: the report and the targets read only this."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from services.bench.loadgen import RunResult

#: A contender sustains a rate when p99 stays under this and it completes what was offered.
SLO_P99_MS = 50.0


def sustained(run: RunResult) -> bool:
    # Latency counts from each request's intended send time, so falling behind the offered rate shows in p99.
    return run.errors == 0 and run.dropped == 0 and run.percentile_ms(99) <= SLO_P99_MS


@dataclass
class Step:
    """One open-loop run at a fixed rate, with the server's CPU seconds per 1000 requests answered."""

    run: RunResult
    cpu_per_1000: float


@dataclass
class Contender:
    key: str
    """Stable name the targets look the contender up by: `graph`, `monolith`, `feast_floor`..."""
    name: str
    floor: RunResult | None = None
    """One call at a time: the latency with nothing queued."""
    steps: list[Step] = field(default_factory=list)
    """Open-loop runs at the rates the sweep chose, slowest first."""

    @property
    def max_sustained_rate(self) -> float:
        return max((s.run.offered_rate for s in self.steps if sustained(s.run)), default=0.0)

    @property
    def saturated(self) -> bool:
        """Some rate was not sustained: the max sustained rate is the contender's, not the sweep's top."""
        return any(not sustained(s.run) for s in self.steps)

    @property
    def cpu_at_max_rate(self) -> float | None:
        rate = self.max_sustained_rate
        return next((s.cpu_per_1000 for s in self.steps if s.run.offered_rate == rate), None)


@dataclass
class HedgingRun:
    """Gateway.Score at a fixed open-loop rate, with the features hop's attempts (gateway's counters)."""

    name: str
    run: RunResult
    calls: float
    """Features hop calls the gateway made (one per Score call that reached the hop)."""
    attempts: float
    """Requests it sent for them: first requests, hedges and retries."""
    hedges_sent: float = 0.0
    hedges_won: float = 0.0

    @property
    def extra_ratio(self) -> float:
        """Features requests beyond one per call, per call."""
        return (self.attempts - self.calls) / self.calls if self.calls else 0.0


@dataclass
class TracingRun:
    """Gateway.Score at saturation (closed loop, many calls in flight) with tracing on or off."""

    name: str
    run: RunResult
    turn_rates: list[float] = field(default_factory=list)
    """Calls answered per second in each turn of the interleaved runs, in order."""
    receiver_cpu_per_1000: float | None = None
    """CPU of the trace receiver (its own process) per 1000 calls; None when there is none."""
    spans_by_service: dict[str, int] = field(default_factory=dict)
    """Spans the receiver got from each service over the traced stack's life."""
    cpu_per_1000: float | None = None
    """CPU seconds per 1000 calls answered, over its turns and the pause after each: every process of the
    stack that served them, and the trace receiver for the sampled mode."""
    turn_cpu_per_1000: list[dict[str, float]] = field(default_factory=list)
    """Each turn's CPU seconds per 1000 calls answered in it, by part of the graph (`gateway`, `features`,
    `tritonserver`, `receiver`...: services.bench.processes.part_of), in the order of `turn_rates`."""

    @property
    def rate(self) -> float:
        return self.run.achieved_rate

    def turn_ratios(self, base: TracingRun) -> list[float]:
        """Each of its turns' rate over `base`'s turn in the same round."""
        return [a / b for a, b in zip(self.turn_rates, base.turn_rates, strict=True) if b]

    def _turn_cpu_pairs(self, base: TracingRun) -> list[tuple[dict[str, float], dict[str, float]]]:
        """Its turns' CPU by part beside `base`'s turn of each round; none unless both have every turn's."""
        if len(self.turn_cpu_per_1000) != len(base.turn_cpu_per_1000):
            return []
        return list(zip(self.turn_cpu_per_1000, base.turn_cpu_per_1000, strict=True))

    def cpu_changes(self, base: TracingRun) -> list[float]:
        """Each round's CPU per call over `base`'s turn in the same round, less one; empty unless both were
        measured turn by turn."""
        return [
            sum(mine.values()) / sum(theirs.values()) - 1
            for mine, theirs in self._turn_cpu_pairs(base)
            if sum(theirs.values())
        ]

    def cpu_change(self, base: TracingRun) -> float | None:
        """How much more CPU per call than `base` (0.06 for 6 % more): the median of the rounds' when both
        were measured turn by turn, as `ratio`; else of the whole runs'; None when either was not measured."""
        if rounds := self.cpu_changes(base):
            return statistics.median(rounds)
        if not self.cpu_per_1000 or not base.cpu_per_1000:
            return None
        return self.cpu_per_1000 / base.cpu_per_1000 - 1

    def cpu_by_part_change(self, base: TracingRun) -> dict[str, float]:
        """CPU seconds per 1000 calls more than `base`, by part of the graph: for each part either has, the
        median of the rounds' differences; empty when they were not measured turn by turn."""
        pairs = self._turn_cpu_pairs(base)
        parts = sorted(set().union(*(mine.keys() | theirs.keys() for mine, theirs in pairs)))
        return {
            part: statistics.median(mine.get(part, 0.0) - theirs.get(part, 0.0) for mine, theirs in pairs)
            for part in parts
        }

    def ratio(self, base: TracingRun) -> float:
        """Its rate over `base`'s: the median of the rounds' ratios when there are turns, so that a turn the
        machine's neighbours slowed (every few seconds here) moves it little; else the whole runs'."""
        turns = self.turn_ratios(base)
        if turns:
            return statistics.median(turns)
        return self.rate / base.rate if base.rate else 0.0


@dataclass
class BenchResults:
    contenders: list[Contender]
    half_load: Step | None = None
    """The graph at half its max sustained rate."""
    hedging: dict[str, HedgingRun] = field(default_factory=dict)
    """By `healthy`, `slow-unhedged`, `slow-hedged`."""
    tracing: dict[str, TracingRun] = field(default_factory=dict)
    """At saturation, by `off`, `unsampled`, `on`."""
    tracing_steady: dict[str, TracingRun] = field(default_factory=dict)
    """At a steady rate below saturation, by `unsampled`, `on`."""

    def contender(self, key: str) -> Contender | None:
        return next((c for c in self.contenders if c.key == key), None)
