import pytest

from services.gateway.deadline import Deadline
from services.runtime.errors import DeadlineExceeded


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_hop_gets_what_remains_minus_the_reserve() -> None:
    clock = ManualClock()
    deadline = Deadline(0.100, reserve_s=0.002, clock=clock)

    assert deadline.hop_timeout_s("features") == pytest.approx(0.098)
    clock.now += 0.030
    assert deadline.hop_timeout_s("predict") == pytest.approx(0.068)


@pytest.mark.parametrize("elapsed_s", [0.0985, 0.1, 0.5])
def test_a_hop_is_not_started_without_time_beyond_the_reserve(elapsed_s: float) -> None:
    clock = ManualClock()
    deadline = Deadline(0.100, reserve_s=0.002, clock=clock)
    clock.now += elapsed_s

    with pytest.raises(DeadlineExceeded, match="postprocess not called"):
        deadline.hop_timeout_s("postprocess")
