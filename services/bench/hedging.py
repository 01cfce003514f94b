"""Hedging with one slow replica: Gateway.Score at a fixed open-loop rate, healthy, slow without hedging and
slow with it, and the extra features requests hedging cost, from the gateway's own Prometheus counters.

The slow replica is `features-1` delaying 5 % of its calls by 50 ms: with two replicas taken in turn, 2.5 % of
calls are slow, enough to set an unhedged p99 and nowhere near the median. Both slow runs share one stack: its
own gateway hedges, a second gateway on the same replicas does not. The healthy run is on a stack of its own,
up at the same time. The three gateways are driven in turns of a few seconds, so that the machine's
neighbours, which come and go, weigh on all three alike.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from scoregraph.gateway.v1 import gateway_pb2

from services.bench.calls import score_call
from services.bench.loadgen import interleaved, merged, open_loop
from services.bench.measure import console
from services.bench.processes import STACK_SLOTS, LocalStack, local_get, running_stack, stack_ports
from services.bench.results import HedgingRun
from services.bench.tracing import TRACING_OFF
from services.runtime.settings import host_port

SLOW_FEATURES_REPLICA = {
    "SCOREGRAPH_STACK_FAULTY_REPLICA": "features-1",
    "SCOREGRAPH_STACK_FAULT_DELAY_MS": "50",
    "SCOREGRAPH_STACK_FAULT_DELAY_SHARE": "0.05",
}
FEATURES_HEDGING_OFF = {"SCOREGRAPH_GATEWAY_FEATURES_HEDGING": "false"}

#: What the report calls each run.
RUN_NAMES = {
    "healthy": "healthy",
    "slow-unhedged": "slow replica, no hedging",
    "slow-hedged": "slow replica, hedging",
}

Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_counters(url: str) -> Counters:
    """Every counter sample of a service's /metrics, by name and labels."""
    text = local_get(url).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.type == "counter"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def counter(counters: Counters, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, keys), value in counters.items() if sample == name and wanted <= set(keys))


def hop_summary(before: Counters, after: Counters, hop: str) -> dict[str, float]:
    """What the gateway's calls to `hop` did between two readings of its counters."""

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, hop=hop, **labels) - counter(before, name, hop=hop, **labels)

    calls = delta("scoregraph_hop_calls_total")
    attempts = delta("scoregraph_hop_attempts_total")
    return {
        "calls": calls,
        "attempts": attempts,
        "extra_ratio": (attempts - calls) / calls if calls else 0.0,
        "hedges_sent": delta("scoregraph_hedges_sent_total"),
        "hedges_won": delta("scoregraph_hedges_won_total"),
        "cancelled": delta("scoregraph_hop_attempts_total", outcome="cancelled"),
        "budget_exhausted": delta("scoregraph_hedge_budget_exhausted_total"),
        "retries": delta("scoregraph_retries_total"),
    }


@dataclass(frozen=True)
class Gateway:
    """A gateway the hedging runs drive, and where its Prometheus counters are read."""

    key: str
    """`healthy`, `slow-unhedged` or `slow-hedged` (RUN_NAMES)."""
    address: str
    metrics_url: str


#: Length of one turn of each gateway in the interleaved hedging runs.
SLICE_S = 4.0


async def measure_hedging(
    gateways: Sequence[Gateway],
    requests: list[gateway_pb2.ScoreRequest],
    rate: float,
    seconds: float,
) -> dict[str, HedgingRun]:
    """Each gateway open loop at `rate` for `seconds` in all, in interleaved turns of about SLICE_S (so
    all of them see the same machine), after a warm-up of each as long as a quarter of that, long enough
    for the hedging delay to adapt to the stack's latency."""
    rounds = max(1, round(seconds / SLICE_S))
    async with contextlib.AsyncExitStack() as calls:
        call_of = {
            gateway.key: await calls.enter_async_context(score_call(gateway.address, requests))
            for gateway in gateways
        }
        for call in call_of.values():
            await open_loop(call, rate, max(seconds / 4, 2.0))
        before = {gateway.key: metrics_counters(gateway.metrics_url) for gateway in gateways}
        runs = await interleaved(
            {
                key: functools.partial(open_loop, call, rate, seconds / rounds)
                for key, call in call_of.items()
            },
            rounds,
        )
        after = {gateway.key: metrics_counters(gateway.metrics_url) for gateway in gateways}
    results = {}
    for key, turns in runs.items():
        run = merged(turns)
        features = hop_summary(before[key], after[key], "features")
        result = HedgingRun(
            RUN_NAMES[key],
            run,
            features["calls"],
            features["attempts"],
            features["hedges_sent"],
            features["hedges_won"],
        )
        console.log(
            f"hedging, {result.name}: {rate:.0f}/s -> p50 {run.percentile_ms(50):.2f} ms, "
            f"p99 {run.percentile_ms(99):.2f} ms, p999 {run.percentile_ms(99.9):.2f} ms, "
            f"extra features requests {result.extra_ratio:.1%}, {run.errors} errors"
        )
        results[key] = result
    return results


async def measure_slow_replica(
    out: Path,
    requests: list[gateway_pb2.ScoreRequest],
    rate: float,
    seconds: float,
    tracing: Mapping[str, str] = TRACING_OFF,
    healthy: LocalStack | None = None,
) -> dict[str, HedgingRun]:
    """`slow-unhedged` and `slow-hedged` (and `healthy` on the `healthy` stack, when given) in interleaved
    turns, on one stack whose `features-1` is slow (a fault is set when a stack starts), traced as
    `tracing` says: the stack's gateway hedges, a second one started beside it does not."""
    first = STACK_SLOTS["slow"]
    with running_stack(
        out / "stack-slow.log", {**tracing, **SLOW_FEATURES_REPLICA}, stack_ports(first), service_logs=True
    ) as stack:
        port, metrics_port = first + 52, first + 469
        unhedged = stack.start_gateway(port, metrics_port, FEATURES_HEDGING_OFF, out / "gateway-unhedged.log")
        try:
            gateways = [
                Gateway(
                    "slow-unhedged",
                    host_port(stack.settings.host, port),
                    f"http://{host_port(stack.settings.host, metrics_port)}/metrics",
                ),
                Gateway("slow-hedged", stack.gateway, stack.gateway_metrics_url),
            ]
            if healthy is not None:
                gateways.insert(0, Gateway("healthy", healthy.gateway, healthy.gateway_metrics_url))
            return await measure_hedging(gateways, requests, rate, seconds)
        finally:
            unhedged.stop()
