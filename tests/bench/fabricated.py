"""Fabricated runs: the report and the targets are pure functions of RunResults, so no server is needed."""

from __future__ import annotations

from collections.abc import Sequence

from services.bench.loadgen import RunResult
from services.bench.results import BenchResults, Contender, HedgingRun, Step, TracingRun


def make_run(latencies_ms: Sequence[float], rate: float = 100.0) -> RunResult:
    """A run at `rate` that answered with these latencies, over the time the rate gives them."""
    run = RunResult(rate, len(latencies_ms) / rate if rate else 1.0)
    for latency in latencies_ms:
        run.histogram.record_value(int(latency * 1000))
    run.ok = run.sent = len(latencies_ms)
    return run


def contender(key: str, floor_ms: float, rates: dict[float, bool] | None = None) -> Contender:
    """A contender whose floor p50 and p99 are `floor_ms`, sustaining the rates marked True."""
    steps = [
        Step(make_run([1.0] * 100 if ok else [1.0] * 90 + [200.0] * 10, rate), 1.0)
        for rate, ok in (rates or {}).items()
    ]
    return Contender(key, key, make_run([floor_ms] * 100), steps)


def results(**overrides: Contender) -> BenchResults:
    """Every contender and run the targets read, with `overrides` in place of some contenders."""
    contenders = {
        "feast_floor": contender("feast_floor", 1.0),
        "triton_floor": contender("triton_floor", 2.0),
        "graph": contender("graph", 4.0, {100: True, 200: False}),
        "monolith": contender("monolith", 2.5, {100: True, 200: True, 400: False}),
        "features_service": contender("features_service", 1.3, {300: True, 600: False}),
        "feast_server": contender("feast_server", 5.0, {100: True, 200: False}),
    }
    contenders.update(overrides)
    return BenchResults(
        list(contenders.values()),
        half_load=Step(make_run([5.0] * 98 + [8.5] * 2, 50), 1.0),
        hedging={
            "slow-unhedged": HedgingRun("slow", make_run([10.0] * 97 + [60.0] * 3), 100, 100),
            "slow-hedged": HedgingRun("hedged", make_run([10.5] * 97 + [11.0] * 3), 100, 103, 3, 2),
        },
        tracing={
            # The sampled mode's third turn was slowed by the machine, not by tracing.
            "off": TracingRun(
                "off",
                make_run([20.0] * 100, 200),
                [210.0, 190.0, 200.0],
                cpu_per_1000=11.2,
                turn_cpu_per_1000=[
                    {"gateway": 4.8, "features": 2.9, "tritonserver": 2.0},
                    {"gateway": 5.0, "features": 3.0, "tritonserver": 2.0},
                    {"gateway": 4.9, "features": 2.9, "tritonserver": 1.9},
                ],
            ),
            # The stack with tracing off, its calls carrying a caller's traceparent: only the gateway pays.
            "propagated": TracingRun(
                "propagated",
                make_run([20.1] * 100, 199),
                [205.0, 186.0, 196.0],
                cpu_per_1000=11.3,
                turn_cpu_per_1000=[
                    {"gateway": 4.9, "features": 2.9, "tritonserver": 2.0},
                    {"gateway": 5.1, "features": 3.0, "tritonserver": 2.0},
                    {"gateway": 5.0, "features": 2.9, "tritonserver": 1.9},
                ],
            ),
            "unsampled": TracingRun(
                "unsampled",
                make_run([20.5] * 100, 196),
                [198.0, 194.0, 197.0],
                cpu_per_1000=11.4,
                turn_cpu_per_1000=[
                    {"gateway": 5.0, "features": 3.0, "tritonserver": 2.0},
                    {"gateway": 5.2, "features": 3.1, "tritonserver": 2.1},
                    {"gateway": 5.1, "features": 3.0, "tritonserver": 2.0},
                ],
            ),
            "on": TracingRun(
                "on",
                make_run([22.0] * 95, 163),
                [189.0, 190.0, 110.0],
                cpu_per_1000=12.0,
                turn_cpu_per_1000=[
                    {"gateway": 5.3, "features": 3.2, "tritonserver": 2.2, "receiver": 0.1},
                    {"gateway": 5.5, "features": 3.3, "tritonserver": 2.3, "receiver": 0.1},
                    # The slowed turn: every process used more per call.
                    {"gateway": 9.0, "features": 5.0, "tritonserver": 3.0, "receiver": 0.2},
                ],
            ),
        },
        tracing_steady={
            "unsampled": TracingRun(
                "unsampled",
                make_run([12.0] * 98 + [30.0] * 2, 80),
                [80.0, 80.0],
                turn_cpu_per_1000=[{"gateway": 6.0, "features": 4.0}, {"gateway": 6.2, "features": 3.8}],
            ),
            "on": TracingRun(
                "on",
                make_run([12.4] * 98 + [31.0] * 2, 80),
                [80.0, 80.0],
                turn_cpu_per_1000=[
                    {"gateway": 6.2, "features": 4.1, "receiver": 0.1},
                    {"gateway": 6.6, "features": 4.0, "receiver": 0.2},
                ],
            ),
        },
    )
