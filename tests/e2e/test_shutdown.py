"""SIGTERM to the stack stops every process it started: no orphan tritonserver, stub or service."""

import psutil
import pytest

from tests.e2e.conftest import start_stack

pytestmark = pytest.mark.e2e


def test_sigterm_to_the_stack_leaves_no_process_behind(tmp_path):
    # Ports of its own: the session's stack may be running beside it.
    stack = start_stack(
        tmp_path / "stack.log",
        GATEWAY_PORT=53051,
        FEATURES_PORT=53061,
        POSTPROCESS_PORT=53071,
        TRITON_PORT=53001,
        METRICS_PORT=53464,
    )
    started = psutil.Process(stack.process.pid).children(recursive=True)
    names = {p.name() for p in started}
    assert len(started) >= 5 and any("tritonserver" in n for n in names), names

    stack.stop()

    # stop() waits 10 s for every process the stack started to exit, then kills and names the survivors.
    assert stack.survivors == []
