import asyncio
import time

import pytest

from services.bench.loadgen import closed_loop, interleaved, merged, open_loop


async def test_open_loop_keeps_sending_on_schedule_while_responses_are_slow():
    async def slow(_: int) -> None:
        await asyncio.sleep(0.2)

    result = await open_loop(slow, rate=200, duration_s=0.25)

    # 50 requests left on schedule although each took 200 ms: a closed loop would have sent 2.
    assert (result.sent, result.ok, result.errors) == (50, 50, 0)
    assert result.percentile_ms(50) >= 200


async def test_latency_counts_from_the_intended_send_time_so_a_stall_is_not_hidden():
    async def stalls_once(i: int) -> None:
        if i == 0:
            time.sleep(0.3)  # blocks the loop: requests due meanwhile go out late

    result = await open_loop(stalls_once, rate=100, duration_s=0.5)

    # Requests 1..29 were due during the stall; each is charged the time it waited to be sent (request i
    # waited about 300 - 10 i ms), so the slowest quarter waited well over 100 ms.
    assert result.sent == 50
    assert result.percentile_ms(75) >= 100
    assert result.max_ms >= 250


async def test_errors_are_counted_not_raised():
    async def failing(i: int) -> None:
        if i % 2:
            raise RuntimeError("upstream down")

    result = await closed_loop(failing, 10)
    assert (result.ok, result.errors) == (5, 5)


async def test_closed_loop_for_a_duration_keeps_concurrency_calls_in_flight():
    in_flight = 0
    most = 0

    async def call(_: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    result = await closed_loop(call, seconds=0.2, concurrency=4)

    assert most == 4
    assert result.ok == result.sent > 4
    assert result.offered_rate == result.achieved_rate


async def test_interleaved_takes_the_contenders_in_turn_rotating_and_merges_each_ones_slices():
    order: list[str] = []

    def slice_of(key: str, delay_s: float):
        async def call(_: int) -> None:
            order.append(key)
            await asyncio.sleep(delay_s)

        return lambda: closed_loop(call, 3)

    turns = await interleaved({"a": slice_of("a", 0.001), "b": slice_of("b", 0.02)}, rounds=2)
    assert [len(turns["a"]), len(turns["b"])] == [2, 2]
    runs = {key: merged(slices) for key, slices in turns.items()}

    # Round one a then b, round two b then a: neither always follows the other.
    assert order == ["a"] * 3 + ["b"] * 6 + ["a"] * 3
    assert (runs["a"].ok, runs["b"].ok) == (6, 6)
    assert runs["a"].closed and runs["b"].closed
    # Each merged run keeps its own latencies (every one of b's calls took at least 20 ms) and, closed
    # loop, offers the rate it answered.
    assert runs["b"].histogram.get_min_value() >= 20_000
    assert [runs[key].histogram.get_total_count() for key in "ab"] == [6, 6]
    assert runs["b"].offered_rate == runs["b"].achieved_rate


async def test_merged_open_loop_slices_keep_the_offered_rate_and_add_their_counts():
    async def fine(_: int) -> None:
        return None

    first = await open_loop(fine, rate=100, duration_s=0.1)
    second = await open_loop(fine, rate=100, duration_s=0.1)

    run = merged([first, second])

    assert run.offered_rate == 100
    assert run.sent == first.sent + second.sent == 20
    assert run.histogram.get_total_count() == 20
    with pytest.raises(ValueError, match="open-loop and closed-loop"):
        merged([first, await closed_loop(fine, 2)])
