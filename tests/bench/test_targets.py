import pytest

from services.bench.results import BenchResults, TracingRun
from services.bench.targets import evaluate
from tests.bench.fabricated import contender, make_run, results


def verdicts(bench: BenchResults) -> dict[str, str]:
    return {t.name: t.verdict for t in evaluate(bench)}


def test_each_target_is_computed_from_the_runs_figures():
    targets = {t.name: t for t in evaluate(results())}

    assert targets["Graph overhead at low load"].figures == "4.00 - (1.00 + 2.00) = 1.00 ms"
    assert targets["Added tail at half the saturation rate"].figures == "8.50 - (1.00 + 2.00) = 5.50 ms"
    assert targets["Graph throughput vs the monolith"].figures == "100/s / 200/s = 0.50"
    assert targets["Hedging: extra load"].figures == "(103 - 100) / 100 = 3.0%"
    assert targets["Tracing at 100 % sampling"].figures == (
        "0.955 over 3 rounds (all turns: 163/s / 196/s = 0.83; CPU per call +8.0%; "
        "a stack with tracing off: 0.900)"
    )
    assert targets["Tracing at 100 % sampling, against tracing off"].figures == (
        "0.900 over 3 rounds (all turns: 163/s / 200/s = 0.81; CPU per call +12.0%)"
    )
    assert {name: t.verdict for name, t in targets.items()} == {
        "Graph overhead at low load": "met",
        "Tail at half the saturation rate": "met",
        "Added tail at half the saturation rate": "missed",
        "Graph throughput vs the monolith": "met",
        "Features service latency": "met",
        "Features service throughput": "met",
        "Hedging: tail": "met",
        "Hedging: extra load": "met",
        "Hedging: median": "met",
        "Tracing at 100 % sampling": "met",
        "Tracing at 100 % sampling, against tracing off": "met",
    }


def test_the_graph_overhead_says_what_its_bare_grpc_round_trips_cost_when_the_run_measured_one():
    bench = results(grpc_floor=contender("grpc_floor", 1.1))

    overhead = {t.name: t for t in evaluate(bench)}["Graph overhead at low load"]

    assert overhead.figures == (
        "4.00 - (1.00 + 2.00) = 1.00 ms; the 3 round trips beyond the floors cost 1.10 ms each bare"
    )
    assert overhead.met


def test_a_ratio_over_a_rate_that_never_saturated_decides_only_where_the_bound_does():
    # The monolith sustained its top rate, 200/s: it may do more, so the graph's 100/s being half of 200/s
    # decides nothing...
    unsaturated = contender("monolith", 2.5, {100: True, 200: True})
    assert verdicts(results(monolith=unsaturated))["Graph throughput vs the monolith"] == "inconclusive"
    # ...but a graph below half of 200/s misses whatever the monolith could do beyond.
    slow_graph = contender("graph", 4.0, {50: True, 100: False})
    bench = results(monolith=unsaturated, graph=slow_graph)
    assert verdicts(bench)["Graph throughput vs the monolith"] == "missed"


def test_a_contender_that_sustained_none_of_its_rates_is_beaten_by_one_above_them():
    overwhelmed = contender("feast_server", 5.0, {40: False, 20: False})
    target = {t.name: t for t in evaluate(results(feast_server=overwhelmed))}["Features service throughput"]

    assert (target.figures, target.verdict) == ("300/s / under 20/s = over 15.00", "met")


def test_targets_without_their_runs_are_not_measured():
    bench = BenchResults([contender("graph", 4.0)])
    assert set(verdicts(bench).values()) == {"not measured"}


def test_tracing_is_judged_against_the_same_stack_sampling_nothing_and_against_tracing_off():
    def tracing(on: float, unsampled: float, off: float) -> tuple[str, str]:
        bench = results()
        bench.tracing = {
            "off": TracingRun("off", make_run([20.0] * 10, off)),
            "unsampled": TracingRun("unsampled", make_run([20.0] * 10, unsampled)),
            "on": TracingRun("on", make_run([20.0] * 10, on)),
        }
        judged = verdicts(bench)
        return judged["Tracing at 100 % sampling"], judged["Tracing at 100 % sampling, against tracing off"]

    assert tracing(on=180, unsampled=195, off=210) == ("met", "missed")  # 0.92 of the same stack, 0.86 of off
    assert tracing(on=170, unsampled=195, off=180) == ("missed", "met")  # 0.87 of the same stack, 0.94 of off
    assert tracing(on=190, unsampled=200, off=205) == ("met", "met")
    bench = results()
    del bench.tracing["unsampled"]
    assert verdicts(bench)["Tracing at 100 % sampling"] == "not measured"
    assert verdicts(bench)["Tracing at 100 % sampling, against tracing off"] == "met"
    del bench.tracing["off"]
    assert verdicts(bench)["Tracing at 100 % sampling, against tracing off"] == "not measured"


def test_tracing_is_judged_on_the_median_of_its_rounds_when_it_ran_in_turns():
    def tracing(on_turns: list[float], unsampled_turns: list[float]) -> str:
        bench = results()
        on, unsampled = sum(on_turns) / len(on_turns), sum(unsampled_turns) / len(unsampled_turns)
        bench.tracing = {
            "unsampled": TracingRun("unsampled", make_run([20.0] * 10, unsampled), unsampled_turns),
            "on": TracingRun("on", make_run([20.0] * 10, on), on_turns),
        }
        return verdicts(bench)["Tracing at 100 % sampling"]

    # One sampled turn slowed 3x by the machine: 0.73 over all turns, but 0.95 in most rounds.
    assert tracing([190, 191, 60], [200, 200, 200]) == "met"
    # Most rounds below 0.9, whatever one turn did: 0.97 over all turns.
    assert tracing([170, 175, 240], [200, 200, 190]) == "missed"


def test_cpu_per_call_is_compared_round_by_round_when_each_turn_was_measured():
    def run(turns: list[dict[str, float]]) -> TracingRun:
        total = sum(sum(turn.values()) for turn in turns) / len(turns)
        return TracingRun(
            "x", make_run([20.0] * 10), [100.0] * len(turns), cpu_per_1000=total, turn_cpu_per_1000=turns
        )

    base = run([{"gateway": 4.0, "features": 6.0}] * 3)
    # One turn four times dearer: the rounds' median sees the other two.
    sampled = run([{"gateway": 4.5, "features": 6.0}, {"gateway": 4.4, "features": 6.1}, {"gateway": 40.0}])
    assert sampled.cpu_change(base) == pytest.approx(0.05)
    change = sampled.cpu_by_part_change(base)
    # A part one run lacks counts as none: 40 - 4 for the gateway, 0 - 6 for the features in that round.
    assert change == pytest.approx({"gateway": 0.5, "features": 0.0})
    # Without every turn's CPU on both sides, the whole runs' figures.
    whole = TracingRun("x", make_run([20.0] * 10), [100.0] * 3, cpu_per_1000=12.0)
    assert whole.cpu_change(base) == pytest.approx(0.2)
    assert whole.cpu_by_part_change(base) == {}
