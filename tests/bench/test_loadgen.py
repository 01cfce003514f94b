import asyncio
import time

from services.bench.loadgen import closed_loop, open_loop


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
