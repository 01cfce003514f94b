"""What tracing every call costs, on its own: the tracing part of `make bench` (services.bench.tracing).

    python -m services.stack.bench_tracing [--seconds 15] [--concurrency 16] [--steady-rounds 6]

Gateway.Score at saturation, in turns, on a stack with tracing off and on one where every process samples
every call and exports it over OTLP/HTTP to a receiver in a process of its own; then, on the traced stack,
sampling every call and none at a steady half of the unsampled saturation rate, in turns.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from services.bench.processes import STACK_SLOTS, running_stack, stack_ports
from services.bench.results import BenchResults
from services.bench.tables import tracing_table
from services.bench.tracing import (
    RECEIVER_ENDPOINT,
    measure_steady_tracing,
    measure_tracing,
    spans_received,
    start_receiver,
    tracing_on,
)
from services.stack.traffic import load_live, score_request


async def measure_both(seconds: float, concurrency: int, steady_rounds: int) -> BenchResults:
    requests = [score_request(row) for row in load_live().head(500).itertuples(index=False)]
    results = BenchResults([])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        receiver = start_receiver(out)
        try:
            ports = stack_ports(STACK_SLOTS["graph"])
            with running_stack(
                out / "stack-traced.log", tracing_on(RECEIVER_ENDPOINT), ports, service_logs=True
            ) as traced:
                results.tracing = await measure_tracing(out, traced, receiver, requests, seconds, concurrency)
                if steady_rounds and (rate := round(results.tracing["unsampled"].rate / 2)):
                    results.tracing_steady = await measure_steady_tracing(
                        traced, receiver, requests, rate, steady_rounds
                    )
        finally:
            receiver.stop()
        results.tracing["on"].spans_by_service = spans_received(receiver)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.bench_tracing", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15, help="saturation run of each mode, in turns")
    parser.add_argument("--concurrency", type=int, default=16, help="Score calls in flight")
    parser.add_argument(
        "--steady-rounds", type=int, default=6, help="rounds at half the saturation rate (0: none)"
    )
    args = parser.parse_args()
    print(tracing_table(asyncio.run(measure_both(args.seconds, args.concurrency, args.steady_rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
