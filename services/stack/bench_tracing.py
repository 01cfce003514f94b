"""What tracing every call costs: Gateway.Score at saturation with tracing off and at 100% sampling.

    python -m services.stack.bench_tracing [--seconds 15] [--concurrency 16]

Each mode starts the local stack on its own ports; "on" exports every span (all four services and Triton)
over OTLP/HTTP to a receiver in this process, "off" samples nothing and exports nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
from scoregraph.gateway.v1 import gateway_pb2_grpc

from services.stack.collector import TraceCollector
from services.stack.supervisor import wait_until_serving
from services.stack.topology import StackSettings, processes
from services.stack.traffic import load_live, score_request

PORTS = {"GATEWAY_PORT": 57051, "FEATURES_PORT": 57061, "POSTPROCESS_PORT": 57071, "TRITON_PORT": 57001}


async def saturate(address: str, requests: list, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.Score(requests[i % len(requests)], timeout=5)
                latencies.append(time.perf_counter() - started)
                i += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


def run_mode(traced: bool, seconds: float, concurrency: int, requests: list) -> dict[str, float]:
    collector = TraceCollector(max_traces=1000).start() if traced else None
    env = {**os.environ, **{f"SCOREGRAPH_STACK_{k}": str(v) for k, v in PORTS.items()}}
    env["SCOREGRAPH_STACK_METRICS_PORT"] = "57464"
    env["SCOREGRAPH_TRACES_COLLECT"] = "false"
    if collector:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.http_endpoint, OTEL_TRACES_SAMPLER="always_on")
    else:
        env.update(OTEL_TRACES_SAMPLER="always_off")
    settings = StackSettings(**{k.lower(): v for k, v in PORTS.items()}, metrics_port=57464)
    with tempfile.TemporaryFile() as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up"], env=env, stdout=log, stderr=log
        )
        try:
            if wait_until_serving([p.health_address for p in processes(settings)], 120):
                raise RuntimeError("stack did not come up")
            address = f"{settings.host}:{settings.gateway_port}"
            asyncio.run(saturate(address, requests, 3, concurrency))  # warm-up
            latencies = np.array(asyncio.run(saturate(address, requests, seconds, concurrency))) * 1000
        finally:
            stack.send_signal(signal.SIGTERM)
            stack.wait(timeout=60)
            if collector:
                collector.stop()
    return {
        "calls/s": len(latencies) / seconds,
        "p50 ms": float(np.percentile(latencies, 50)),
        "p99 ms": float(np.percentile(latencies, 99)),
        "spans": collector.received if collector else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    requests = [score_request(row) for row in load_live().head(500).itertuples(index=False)]
    results = {
        mode: run_mode(mode == "on", args.seconds, args.concurrency, requests) for mode in ("off", "on")
    }
    for mode, result in results.items():
        print(f"tracing {mode:3}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()))
    off, on = results["off"], results["on"]
    print(
        f"100% sampling: {1 - on['calls/s'] / off['calls/s']:.1%} less throughput, "
        f"p50 {on['p50 ms'] - off['p50 ms']:+.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
