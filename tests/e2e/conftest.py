"""The whole local stack, started as `make up` starts it (python -m services.stack up), on its own ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scoregraph.gateway.v1 import gateway_pb2_grpc

from services.bench.processes import LocalStack, stack_ports
from services.bench.processes import start_stack as bench_start_stack
from services.stack.traffic import load_live
from tests.ports import STACK_BASES

# Away from the defaults, so a developer's `make up` and the tests don't fight over ports.
TEST_PORTS = stack_ports(STACK_BASES["session"])


def start_stack(log: Path, env: dict[str, str] | None = None, **overrides: int) -> LocalStack:
    """`python -m services.stack up` on TEST_PORTS (or `overrides`) with extra environment `env` (e.g.
    another service's settings or SCOREGRAPH_STACK_* replica counts), once every process serves."""
    # Test stacks write no trace files unless a test asks for traces.
    env = {"SCOREGRAPH_TRACES_COLLECT": "false", **(env or {})}
    try:
        return bench_start_stack(log, env, {**TEST_PORTS, **overrides})
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[LocalStack]:
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
