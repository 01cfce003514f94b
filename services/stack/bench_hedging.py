"""Benchmark of hedging: Score latency with one slow features replica, hedged and not, and with none.

    python -m services.stack.bench_hedging [--calls 2000] [--concurrency 4]

Starts the local stack three times on its own ports (healthy; one features replica delaying 5 % of its calls
by 50 ms, without hedging; the same with hedging), drives the same live transactions through Gateway.Score,
and prints p50/p99/p999 and the extra-request ratio (features attempts beyond one per call) from the
gateway's own counters. Figures depend on the machine; tests check the mechanism, not these numbers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.stack.supervisor import wait_until_serving
from services.stack.topology import REPO, StackSettings, processes
from services.stack.traffic import load_live, score_request


def stack_ports(first: int) -> dict[str, int]:
    """Ports of a stack of its own, from `first` up: away from `make up`'s and the tests'."""
    return {
        "GATEWAY_PORT": first + 51,
        "FEATURES_PORT": first + 61,
        "POSTPROCESS_PORT": first + 71,
        "TRITON_PORT": first + 1,
        "METRICS_PORT": first + 464,
    }


BENCH_PORTS = stack_ports(56000)
SLOW_FEATURES_REPLICA = {
    "SCOREGRAPH_STACK_FAULTY_REPLICA": "features-1",
    "SCOREGRAPH_STACK_FAULT_DELAY_MS": "50",
    "SCOREGRAPH_STACK_FAULT_DELAY_SHARE": "0.05",
}


@dataclass(frozen=True)
class Outcome:
    latency_s: float
    code: str
    """OK, or the gRPC status code name of a failed call."""
    degraded: bool = False
    finished_at: float = 0.0
    """time.monotonic() when the answer (or error) came."""


@dataclass
class LocalStack:
    settings: StackSettings
    process: subprocess.Popen

    @property
    def gateway(self) -> str:
        return f"{self.settings.host}:{self.settings.gateway_port}"

    @property
    def gateway_metrics_url(self) -> str:
        [gateway] = [p for p in processes(self.settings) if p.name == "gateway"]
        return f"http://{self.settings.host}:{gateway.env['SCOREGRAPH_GATEWAY_METRICS_PORT']}/metrics"

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def start(log: Path, env: dict[str, str], ports: dict[str, int] = BENCH_PORTS) -> LocalStack:
    """`python -m services.stack up` with `ports` and extra environment, once every process serves."""
    full_env = {**os.environ, **{f"SCOREGRAPH_STACK_{k}": str(v) for k, v in ports.items()}, **env}
    settings = StackSettings(
        **{
            k.removeprefix("SCOREGRAPH_STACK_").lower(): v
            for k, v in full_env.items()
            if k.startswith("SCOREGRAPH_STACK_")
        }
    )
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up"],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack = LocalStack(settings, process)
    pending = wait_until_serving([p.health_address for p in processes(settings)], settings.ready_timeout_s)
    if pending or process.poll() is not None:
        stack.stop()
        raise RuntimeError(f"stack not serving ({pending or 'exited'}):\n{log.read_text()[-4000:]}")
    return stack


@contextmanager
def running(log: Path, env: dict[str, str], ports: dict[str, int] = BENCH_PORTS) -> Iterator[LocalStack]:
    stack = start(log, env, ports)
    try:
        yield stack
    finally:
        stack.stop()


def drive(
    address: str, requests: Sequence[gateway_pb2.ScoreRequest], *, concurrency: int, timeout_s: float
) -> list[Outcome]:
    """Score every request, `concurrency` at a time, each with its own deadline; one outcome per request."""
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        def score(request: gateway_pb2.ScoreRequest) -> Outcome:
            started = time.perf_counter()
            try:
                reply = stub.Score(request, timeout=timeout_s)
            except grpc.RpcError as error:
                return Outcome(time.perf_counter() - started, error.code().name, False, time.monotonic())
            return Outcome(time.perf_counter() - started, "OK", reply.degraded, time.monotonic())

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(score, requests))


def metrics_counters(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter sample of a service's /metrics, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.type == "counter"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


gateway_counters = metrics_counters


def counter(counters: dict, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, keys), value in counters.items() if sample == name and wanted <= set(keys))


def hop_summary(before: dict, after: dict, hop: str) -> dict[str, float]:
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


def measure(
    name: str, env: dict[str, str], ports: dict[str, int], requests, *, concurrency: int, warmup: int
) -> dict:
    with tempfile.TemporaryDirectory() as scratch, running(Path(scratch) / "stack.log", env, ports) as stack:
        drive(stack.gateway, requests[:warmup], concurrency=concurrency, timeout_s=2.0)
        before = gateway_counters(stack.gateway_metrics_url)
        outcomes = drive(stack.gateway, requests, concurrency=concurrency, timeout_s=2.0)
        after = gateway_counters(stack.gateway_metrics_url)
    latencies_ms = np.array([o.latency_s for o in outcomes if o.code == "OK"]) * 1000
    p50, p99, p999 = np.percentile(latencies_ms, [50, 99, 99.9])
    return {
        "run": name,
        "calls": len(outcomes),
        "failed": sum(o.code != "OK" for o in outcomes),
        "degraded": sum(o.degraded for o in outcomes),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        **{f"features_{k}": v for k, v in hop_summary(before, after, "features").items()},
    }


def _cell(value: float) -> str:
    return f"{value:>14.3f}" if isinstance(value, float) and not value.is_integer() else f"{value:>14.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.bench_hedging", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)

    live = load_live()
    rows = live.sample(args.calls, replace=len(live) < args.calls, random_state=5)
    requests = [score_request(row) for row in rows.itertuples(index=False)]
    # One Triton replica: the benchmark is about the features hop, and a second one only takes cores. No
    # trace collection: on a small machine the stack's in-process collector competes for the same cores.
    common = {"SCOREGRAPH_STACK_TRITON_REPLICAS": "1", "SCOREGRAPH_TRACES_COLLECT": "false"}
    runs = [
        ("healthy", common),
        (
            "slow replica, no hedging",
            {**common, **SLOW_FEATURES_REPLICA, "SCOREGRAPH_GATEWAY_FEATURES_HEDGING": "false"},
        ),
        ("slow replica, hedging", {**common, **SLOW_FEATURES_REPLICA}),
    ]
    # Each run on ports of its own: a stack that is still letting go of its ports cannot fail the next.
    results = [
        measure(
            name,
            env,
            stack_ports(56000 + 1000 * i),
            requests,
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        for i, (name, env) in enumerate(runs)
    ]

    print(
        f"{args.calls} Score calls per run, {args.concurrency} at a time, after {args.warmup} warm-up calls"
    )
    columns = ("p50_ms", "p99_ms", "p999_ms", "features_extra_ratio", "features_hedges_sent")
    columns += ("features_hedges_won", "failed", "degraded")
    print(f"{'run':<26}" + "".join(f"{c.removeprefix('features_'):>14}" for c in columns))
    for result in results:
        print(f"{result['run']:<26}" + "".join(_cell(result[c]) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
