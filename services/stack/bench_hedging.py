"""Hedging with one slow features replica, on its own: the hedging part of `make bench`.

    python -m services.stack.bench_hedging [--rate 25] [--seconds 32]

Starts the local stack twice on ports of its own (healthy; `features-1` delaying 5 % of its calls by 50 ms,
with a second gateway that does not hedge), drives Gateway.Score at a fixed open-loop rate and prints
p50/p99/p999 and the extra features requests from the gateway's own counters. Figures depend on the machine;
tests check the mechanism, not these numbers. The end-to-end tests start stacks and drive them with what
this module exports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.bench.hedging import (
    SLOW_FEATURES_REPLICA,
    counter,
    hop_summary,
    measure_slow_replica,
    metrics_counters,
)
from services.bench.processes import STACK_SLOTS, LocalStack, stack_ports
from services.bench.processes import running_stack as running
from services.bench.results import BenchResults
from services.bench.tables import hedging_table
from services.bench.tracing import TRACING_OFF
from services.stack.traffic import load_live, score_request

__all__ = [
    "SLOW_FEATURES_REPLICA",
    "LocalStack",
    "Outcome",
    "counter",
    "drive",
    "gateway_counters",
    "hop_summary",
    "metrics_counters",
    "running",
    "score_once",
    "stack_ports",
]

gateway_counters = metrics_counters


@dataclass(frozen=True)
class Outcome:
    latency_s: float
    code: str
    """OK, or the gRPC status code name of a failed call."""
    degraded: bool = False
    finished_at: float = 0.0
    """time.monotonic() when the answer (or error) came."""


def score_once(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: gateway_pb2.ScoreRequest, timeout_s: float
) -> Outcome:
    """One blocking Score call with its own deadline, and its outcome."""
    started = time.perf_counter()
    try:
        reply = stub.Score(request, timeout=timeout_s)
    except grpc.RpcError as error:
        return Outcome(time.perf_counter() - started, error.code().name, False, time.monotonic())
    return Outcome(time.perf_counter() - started, "OK", reply.degraded, time.monotonic())


def drive(
    address: str, requests: Sequence[gateway_pb2.ScoreRequest], *, concurrency: int, timeout_s: float
) -> list[Outcome]:
    """Score every request, `concurrency` at a time, each with its own deadline; one outcome per request.

    Blocking and closed loop, for tests that need every call's outcome rather than latency figures."""
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda request: score_once(stub, request, timeout_s), requests))


async def measure_all(rate: float, seconds: float) -> BenchResults:
    requests = [score_request(row) for row in load_live().itertuples(index=False)]
    results = BenchResults([])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        with running(
            out / "stack-healthy.log", TRACING_OFF, stack_ports(STACK_SLOTS["graph"]), service_logs=True
        ) as healthy:
            results.hedging.update(await measure_slow_replica(out, requests, rate, seconds, healthy=healthy))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.bench_hedging", description=__doc__)
    parser.add_argument("--rate", type=float, default=25, help="Score calls per second, open loop")
    parser.add_argument("--seconds", type=float, default=32, help="length of each run, after a warm-up")
    args = parser.parse_args(argv)
    print(hedging_table(asyncio.run(measure_all(args.rate, args.seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
