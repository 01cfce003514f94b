import pytest

from services.bench.measure import SweepPlan, next_rate, start_rate

PLAN = SweepPlan(step_s=1, floor_calls=10, warmup_calls=1, factor=2.0, resolution=1.25, max_steps=8)


def test_rates_grow_by_the_factor_while_they_are_sustained():
    assert next_rate([(100, True)], PLAN) == 200
    assert next_rate([(100, True), (200, True)], PLAN) == 400


def test_after_the_first_failure_the_rate_bisects_between_the_best_sustained_and_the_failed():
    assert next_rate([(100, True), (200, True), (400, False)], PLAN) == pytest.approx(283, abs=1)
    # 283 held: between 283 and 400.
    assert next_rate([(100, True), (200, True), (400, False), (283, True)], PLAN) == pytest.approx(336, abs=1)


def test_the_sweep_ends_once_the_bracket_is_within_the_resolution():
    assert next_rate([(200, True), (400, False), (283, True), (336, False), (308, True)], PLAN) is None


def test_a_first_rate_already_too_high_steps_down_until_one_holds():
    assert next_rate([(400, False)], PLAN) == 200
    assert (
        next_rate([(400, False), (200, False), (100, False), (50, False), (25, False), (12, False)], PLAN)
        is None
    )


def test_the_sweep_stops_at_the_generators_limit_and_after_max_steps():
    assert next_rate([(3000, True)], PLAN) is None
    assert next_rate([(r, True) for r in range(1, 9)], PLAN) is None


def test_the_first_rate_is_a_share_of_what_one_call_at_a_time_sustains():
    assert start_rate(2.0, PLAN) == 250  # 1000 / 2 ms = 500/s one at a time
    assert start_rate(500.0, PLAN) == PLAN.min_rate
