"""The caller's deadline as the budget every downstream hop draws from."""

import time
from collections.abc import Callable

from services.runtime.errors import DeadlineExceeded


class Deadline:
    """A point in time on the monotonic clock, `budget_s` after construction.

    Each hop gets what remains minus `reserve_s`, the time the gateway needs after the hop returns, so
    that a hop running up to its timeout still leaves time to answer the caller.
    """

    __slots__ = ("_clock", "_expires_at", "_reserve_s")

    def __init__(
        self, budget_s: float, *, reserve_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._expires_at = clock() + budget_s
        self._reserve_s = reserve_s

    @property
    def reserve_s(self) -> float:
        return self._reserve_s

    def remaining_s(self) -> float:
        return self._expires_at - self._clock()

    def hop_timeout_s(self, hop: str) -> float:
        """Timeout for calling `hop` now; raises DeadlineExceeded rather than start a hop with no time."""
        remaining = self.remaining_s()
        timeout = remaining - self._reserve_s
        if timeout <= 0:
            raise DeadlineExceeded(
                f"deadline too short: {max(remaining, 0.0) * 1000:.1f} ms left, {hop} not called", hop=hop
            )
        return timeout
