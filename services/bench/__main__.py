"""make bench: scoregraph's latency and throughput beside what users would run instead, in one run.

    python -m services.bench [--quick]

Contenders, all on this machine, fed the same live transactions:
- floors: Feast's in-process `get_online_features`, and a direct tritonclient call to Triton, one at a time;
- the graph: Gateway.Score on the embedded stack (python -m services.stack up);
- the monolith: validation, Feast, onnxruntime and the policy in one process (services.bench.monolith).
Each contender is driven one call at a time (its latency floor), then open loop at rising rates until it
saturates. The report (markdown + PNG) goes to results/bench-<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
import psutil
import tritonclient.grpc.aio as triton
from rich.console import Console
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.bench.loadgen import RunResult, closed_loop, open_loop
from services.bench.report import write_report
from services.features.feature_service import contract_of, entity_frame, historical_matrix, open_store
from services.stack.supervisor import wait_until_serving
from services.stack.topology import REPO, StackSettings, processes
from services.stack.traffic import load_live, score_request

#: A contender sustains a rate when p99 stays under this and it completes what was offered.
SLO_P99_MS = 50.0
BENCH_PORTS = {
    "GATEWAY_PORT": 58051,
    "FEATURES_PORT": 58061,
    "POSTPROCESS_PORT": 58071,
    "TRITON_PORT": 58001,
    "METRICS_PORT": 58464,
}
MONOLITH_PORT = 58091

console = Console()


@dataclass
class Contender:
    name: str
    floor: RunResult | None = None
    steps: list[tuple[RunResult, float]] = field(default_factory=list)
    """Open-loop runs, each with the contender's CPU seconds per 1000 requests."""

    @property
    def max_sustained_rate(self) -> float:
        ok = [r.offered_rate for r, _ in self.steps if sustained(r)]
        return max(ok, default=0.0)


def sustained(run: RunResult) -> bool:
    # Latency counts from each request's intended send time, so falling behind the offered rate shows in p99.
    return run.errors == 0 and run.dropped == 0 and run.percentile_ms(99) <= SLO_P99_MS


def cpu_seconds(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Spawned:
    """A contender's processes, started in their own session and stopped as a group."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        # Open for the processes' whole life, closed in stop().
        self._log = open(log, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.tree = psutil.Process(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


async def sweep(contender: Contender, call, tree: psutil.Process, rates: list[float], step_s: float) -> None:
    for rate in rates:
        before = cpu_seconds(tree)
        run = await open_loop(call, rate, step_s)
        cpu = (cpu_seconds(tree) - before) / max(run.ok, 1) * 1000
        contender.steps.append((run, cpu))
        console.log(
            f"{contender.name}: {rate:.0f}/s -> p50 {run.percentile_ms(50):.2f} ms, "
            f"p99 {run.percentile_ms(99):.2f} ms, {run.achieved_rate:.0f}/s done, {run.errors} errors"
        )
        if run.achieved_rate < 0.8 * rate or run.percentile_ms(99) > 10 * SLO_P99_MS:
            break


async def gateway_contender(name: str, address: str, tree: psutil.Process, requests, rates, step_s, floor_n):
    contender = Contender(name)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def call(i: int) -> gateway_pb2.ScoreResponse:
            return await stub.Score(requests[i % len(requests)], timeout=5)

        await closed_loop(call, 200)  # warm-up: connections, caches, the model's first batches
        contender.floor = await closed_loop(call, floor_n)
        console.log(
            f"{name}: one at a time p50 {contender.floor.percentile_ms(50):.2f} ms, "
            f"p99 {contender.floor.percentile_ms(99):.2f} ms"
        )
        await sweep(contender, call, tree, rates, step_s)
    return contender


async def feast_floor(requests_rows, n: int) -> Contender:
    store = open_store()
    service = store.get_feature_service("fraud_model_v1")
    rows = requests_rows

    async def call(i: int) -> None:
        store.get_online_features(features=service, entity_rows=[rows[i % len(rows)]])

    await closed_loop(call, 100)
    return Contender("floor: Feast get_online_features (in process)", floor=await closed_loop(call, n))


async def triton_floor(address: str, vectors: np.ndarray, n: int) -> Contender:
    client = triton.InferenceServerClient(address)
    try:

        async def call(i: int) -> None:
            tensor = triton.InferInput("features", [1, vectors.shape[1]], "FP32")
            tensor.set_data_from_numpy(vectors[i % len(vectors)][None, :])
            await client.infer("fraud_mlp", [tensor], outputs=[triton.InferRequestedOutput("score")])

        await closed_loop(call, 100)
        return Contender("floor: Triton ModelInfer (tritonclient, direct)", floor=await closed_loop(call, n))
    finally:
        await client.close()


def feature_inputs(live, n: int):
    """Online entity rows and the matching model vectors for the same transactions."""
    from services.features.aggregates import with_entity_keys
    from services.features.keys import DEV_CARD_KEY

    tx = with_entity_keys(live.head(n), DEV_CARD_KEY)
    entities = entity_frame(tx).drop(columns=["event_timestamp", "transaction_id"])
    store = open_store()
    vectors = historical_matrix(store, tx, contract_of(store, "fraud_model_v1")).to_numpy(dtype=np.float32)
    return entities.to_dict("records"), vectors


async def main_async(quick: bool) -> Path:
    out = REPO / "results" / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True)
    live = load_live()
    requests = [score_request(row) for row in live.itertuples(index=False)]
    rates = [50, 100, 200, 300] if quick else [50, 100, 200, 300, 400, 500, 650, 800, 1000, 1200, 1500]
    step_s, floor_n = (3.0, 300) if quick else (6.0, 1000)
    contenders: list[Contender] = []

    entity_rows, vectors = feature_inputs(live, 500)
    contenders.append(await feast_floor(entity_rows, floor_n))

    settings = StackSettings(**{k.lower(): v for k, v in BENCH_PORTS.items()})
    stack_env = {f"SCOREGRAPH_STACK_{k}": str(v) for k, v in BENCH_PORTS.items()}
    stack = Spawned([sys.executable, "-m", "services.stack", "up"], stack_env, out / "stack.log")
    try:
        if wait_until_serving([p.health_address for p in processes(settings)], settings.ready_timeout_s):
            raise RuntimeError(f"the stack did not come up; see {out / 'stack.log'}")
        contenders.append(await triton_floor(f"{settings.host}:{settings.triton_port}", vectors, floor_n))
        gateway = f"{settings.host}:{settings.gateway_port}"
        contenders.append(
            await gateway_contender(
                "scoregraph graph (Gateway.Score)", gateway, stack.tree, requests, rates, step_s, floor_n
            )
        )
    finally:
        stack.stop()

    monolith = Spawned(
        [sys.executable, "-m", "services.bench.monolith"],
        {"SCOREGRAPH_MONOLITH_PORT": str(MONOLITH_PORT)},
        out / "monolith.log",
    )
    try:
        if wait_until_serving([f"127.0.0.1:{MONOLITH_PORT}"], 120):
            raise RuntimeError(f"the monolith did not come up; see {out / 'monolith.log'}")
        contenders.append(
            await gateway_contender(
                "monolith (one process)",
                f"127.0.0.1:{MONOLITH_PORT}",
                monolith.tree,
                requests,
                rates,
                step_s,
                floor_n,
            )
        )
    finally:
        monolith.stop()

    machine = {
        "cpu": platform.processor() or _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            pkg: metadata.version(pkg) for pkg in ("grpcio", "feast", "tritonclient", "onnxruntime")
        },
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0 wheel, CPU, Python backend)",
        "slo_p99_ms": SLO_P99_MS,
    }
    write_report(out, contenders, machine)
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter steps (a smoke run)")
    args = parser.parse_args()
    started = time.monotonic()
    out = asyncio.run(main_async(args.quick))
    console.print((out / "report.md").read_text())
    console.print(f"report and plots in {out.relative_to(REPO)} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
