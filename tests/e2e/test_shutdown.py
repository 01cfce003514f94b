"""SIGTERM to the stack stops every process it started: no orphan tritonserver, stub or service, and no
shared memory left behind; so does closing the terminal `make up` runs in."""

import contextlib
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.bench.processes import stack_ports
from services.predict.tritonserver import shm_prefix
from services.stack.topology import REPO, StackSettings, triton_grpc_ports
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


def test_closing_the_terminal_make_up_runs_in_stops_the_whole_stack():
    # The stack's processes run in sessions of their own, so the terminal's hangup reaches only the
    # supervisor: it used to die of it alone and leave every service and tritonserver running.
    ports = stack_ports(STACK_BASES["shutdown"])
    env = {
        **os.environ,
        **{f"SCOREGRAPH_STACK_{name}": str(port) for name, port in ports.items()},
        "SCOREGRAPH_TRACES_COLLECT": "false",
    }
    terminal, its_other_end = pty.openpty()
    # As from a shell in a terminal: the supervisor leads a session whose controlling terminal is the pty.
    supervisor = subprocess.Popen(
        ["setsid", "--ctty", sys.executable, "-m", "services.stack", "up"],
        cwd=REPO,
        env=env,
        stdin=its_other_end,
        stdout=its_other_end,
        stderr=its_other_end,
    )
    os.close(its_other_end)
    started: list[psutil.Process] = []
    try:
        printed = b""
        deadline = time.monotonic() + 120
        while b"is up" not in printed:
            assert time.monotonic() < deadline and supervisor.poll() is None, printed[-2000:]
            printed += os.read(terminal, 65536)
        started = psutil.Process(supervisor.pid).children(recursive=True)
        assert any(p.name() == "tritonserver" for p in started)

        os.close(terminal)  # the terminal window closes: the kernel hangs up its session
        terminal = -1

        assert supervisor.wait(timeout=60) != 0
        _, alive = psutil.wait_procs(started, timeout=20)
        assert [p.name() for p in alive] == []
    finally:
        if terminal >= 0:
            os.close(terminal)
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
