"""`make bench`'s two side-by-side comparisons, briefly, over real stacks: every contender is driven in its
turns, and what the report reads (calls, turn rates, the gateways' counters, the receiver's spans) is there.
The figures themselves belong to `make bench`; this checks only that the measuring works."""

from __future__ import annotations

import pytest

from services.bench.hedging import measure_slow_replica
from services.bench.processes import STACK_SLOTS, running_stack, stack_ports
from services.bench.results import TracingRun
from services.bench.tracing import (
    RECEIVER_ENDPOINT,
    measure_steady_tracing,
    measure_tracing,
    spans_received,
    start_receiver,
    tracing_on,
)
from services.stack.traffic import score_request

pytestmark = pytest.mark.e2e


def assert_each_turn_served(modes: dict[str, TracingRun]) -> None:
    """Two turns of each mode, each with CPU by process: every service of the graph served it; the
    receiver's CPU is the sampled turns' alone (within this test's short pauses a turn may leave all its
    exports to the next one's, so it is not asserted above zero)."""
    for key, run in modes.items():
        assert len(run.turn_cpu_per_1000) == 2, key
        for turn in run.turn_cpu_per_1000:
            assert {"gateway", "features", "postprocess", "tritonserver"} <= {
                p for p, s in turn.items() if s > 0
            }, key
            assert ("receiver" in turn) == (key == "on"), key


async def test_tracing_and_hedging_comparisons_drive_each_contender_in_turns(tmp_path, live):
    requests = [score_request(row) for row in live.head(200).itertuples(index=False)]
    traced = tracing_on(RECEIVER_ENDPOINT)
    receiver = start_receiver(tmp_path)
    try:
        graph = stack_ports(STACK_SLOTS["graph"])
        with running_stack(tmp_path / "graph.log", traced, graph, service_logs=True) as stack:
            # 5 s in all per mode: two turns each, with a pause after each shorter than the benchmark's (what
            # a sampled turn leaves to export may then be counted in the next: the figures are not judged).
            tracing = await measure_tracing(
                tmp_path, stack, receiver, requests, seconds=5.0, concurrency=4, settle_s=1.0
            )
            # Below saturation: 20/s open loop, two rounds of 2 s turns.
            steady = await measure_steady_tracing(
                stack, receiver, requests, rate=20, rounds=2, settle_s=1.0, turn_s=2.0
            )
            hedging = await measure_slow_replica(
                tmp_path, requests, rate=20, seconds=8.0, tracing=traced, healthy=stack
            )
    finally:
        receiver.stop()

    assert set(tracing) == {"off", "propagated", "unsampled", "on"}
    for run in tracing.values():
        assert len(run.turn_rates) == 2
        assert run.run.ok > 0 and run.run.errors == 0
        assert run.run.closed
        assert run.cpu_per_1000 is not None and run.cpu_per_1000 > 0
    assert_each_turn_served(tracing)
    assert set(tracing["on"].cpu_by_part_change(tracing["unsampled"])) >= {
        "gateway",
        "receiver",
        "tritonserver",
    }
    assert tracing["on"].receiver_cpu_per_1000 is not None

    assert set(steady) == {"unsampled", "on"}
    for run in steady.values():
        # Every call sent on schedule and answered: 20/s for two turns of 2 s.
        assert run.run.sent == 80 and run.run.ok == 80 and run.run.dropped == 0
        assert not run.run.closed
    assert_each_turn_served(steady)
    assert len(steady["on"].cpu_changes(steady["unsampled"])) == 2
    # The traced stack exported every service's spans, Triton's included.
    services = {"gateway", "features", "postprocess", "triton"}
    assert {f"scoregraph-{service}" for service in services} <= set(spans_received(receiver))

    assert set(hedging) == {"healthy", "slow-unhedged", "slow-hedged"}
    for key, run in hedging.items():
        # Open loop at 20/s for 8 s in all, in two turns of 4 s.
        assert run.run.sent == 160, key
        assert run.run.errors == 0, key
        # Each gateway's own counters: one features call per Score call.
        assert run.calls == 160, key
    assert hedging["slow-unhedged"].hedges_sent == 0
    assert hedging["slow-unhedged"].attempts == hedging["slow-unhedged"].calls
