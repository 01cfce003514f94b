"""SIGTERM to the stack stops every process it started: no orphan tritonserver, stub or service."""

import psutil
import pytest

from services.bench.processes import stack_ports
from tests.e2e.conftest import start_stack
from tests.ports import STACK_BASES

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("log_dir", [False, True], ids=["output to the supervisor", "output to log files"])
def test_sigterm_to_the_stack_leaves_no_process_behind_even_one_that_ignores_it(tmp_path, log_dir):
    # Ports of its own: the session's stack may be running beside it.
    env = {"SCOREGRAPH_STACK_LOG_DIR": str(tmp_path / "logs")} if log_dir else {}
    stack = start_stack(tmp_path / "stack.log", env, **stack_ports(STACK_BASES["shutdown"]))
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
