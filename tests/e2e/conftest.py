"""The whole local stack, started as `make up` starts it (python -m services.stack up), on its own ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pandas as pd
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scoregraph.gateway.v1 import gateway_pb2_grpc

from services.stack.supervisor import wait_until_serving
from services.stack.topology import REPO, StackSettings, processes
from services.stack.traffic import load_live

# Away from the defaults, so a developer's `make up` and the tests don't fight over ports.
TEST_PORTS = {
    "GATEWAY_PORT": 52051,
    "FEATURES_PORT": 52061,
    "POSTPROCESS_PORT": 52071,
    "TRITON_PORT": 52001,
    "METRICS_PORT": 52464,
}


@dataclass
class RunningStack:
    settings: StackSettings
    process: subprocess.Popen
    log: Path

    @property
    def gateway(self) -> str:
        return f"{self.settings.host}:{self.settings.gateway_port}"

    def stop(self, timeout_s: float = 30) -> list[str]:
        """SIGTERM the supervisor and wait for it; then kill whatever of its processes outlived it by 10 s,
        so the next stack finds its ports free. Returns those survivors (name and pid): there should be
        none."""
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout_s)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        survivors = []
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivors.append(f"{process.name()} ({process.pid})")
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        return survivors


def start_stack(log: Path, env: dict[str, str] | None = None, **overrides: int) -> RunningStack:
    """Start `python -m services.stack up` with TEST_PORTS (or `overrides`) and extra environment `env`
    (e.g. another service's settings or SCOREGRAPH_STACK_* replica counts), and wait until all serve."""
    ports = {**TEST_PORTS, **overrides}
    env = {
        **os.environ,
        # Test stacks write no trace files unless a test asks for traces.
        "SCOREGRAPH_TRACES_COLLECT": "false",
        **{f"SCOREGRAPH_STACK_{k}": str(v) for k, v in ports.items()},
        **(env or {}),
    }
    stack_keys = {
        k.removeprefix("SCOREGRAPH_STACK_").lower(): v
        for k, v in env.items()
        if k.startswith("SCOREGRAPH_STACK_")
    }
    settings = StackSettings(**stack_keys)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack = RunningStack(settings, process, log)
    pending = wait_until_serving([p.health_address for p in processes(settings)], settings.ready_timeout_s)
    if pending or process.poll() is not None:
        stack.stop()
        pytest.fail(f"stack not serving ({pending or 'exited'}):\n{log.read_text()[-4000:]}")
    return stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("stack") / "stack.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def gateway(stack) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(stack.gateway) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture(scope="session")
def live() -> pd.DataFrame:
    return load_live()


def samples(page: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on a Prometheus page whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
