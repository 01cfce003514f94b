"""SIGTERM to the stack stops every process it started: no orphan tritonserver, stub or service, and no
shared memory left behind."""

from pathlib import Path

import psutil
import pytest

from services.bench.processes import stack_ports
from services.predict.tritonserver import shm_prefix
from services.stack.topology import StackSettings, triton_grpc_ports
from tests.e2e.conftest import start_stack
from tests.ports import STACK_BASES

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("log_dir", [False, True], ids=["output to the supervisor", "output to log files"])
def test_sigterm_to_the_stack_leaves_no_process_behind_even_one_that_ignores_it(tmp_path, log_dir):
    # Ports of its own: the session's stack may be running beside it.
    env = {"SCOREGRAPH_STACK_LOG_DIR": str(tmp_path / "logs")} if log_dir else {}
    ports = stack_ports(STACK_BASES["shutdown"])
    stack = start_stack(tmp_path / "stack.log", env, **ports)
    servers = triton_grpc_ports(StackSettings(triton_port=ports["TRITON_PORT"]))
    assert len(servers) >= 2 and all(shared_memory(port) for port in servers)
    started = psutil.Process(stack.process.pid).children(recursive=True)
    names = {p.name() for p in started}
    assert len(started) >= 5 and any("tritonserver" in n for n in names), names
    # A server that does not end on SIGTERM (as a tritonserver stuck unloading its model does): the stack
    # must kill it when its wait is over, not leave it running.
    stuck = next(p for p in started if p.name() == "tritonserver")
    stuck.suspend()

    stack.stop()

    # stop() waits 10 s for every process the stack started to exit, then kills and names the survivors.
    assert stack.survivors == []
    assert not stuck.is_running()
    # The killed server could not remove its Python-backend shared memory; the stack does, once every server
    # is gone, so none is left in /dev/shm (which is memory).
    assert [region for port in servers for region in shared_memory(port)] == []


def shared_memory(grpc_port: int) -> list[str]:
    """The Python-backend shared memory regions of the tritonserver on `grpc_port`."""
    return [region.name for region in Path("/dev/shm").glob(f"{shm_prefix(grpc_port)}*")]
