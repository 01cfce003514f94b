import json
import os
import socket
import subprocess
import sys

import pytest

from services.stack.topology import REPO
from tests.runtime.test_server import free_port


@pytest.mark.parametrize("taken", ["PORT", "METRICS_PORT"])
def test_a_port_in_use_ends_a_service_with_one_line_naming_the_address(taken) -> None:
    ports = {"PORT": free_port(), "METRICS_PORT": free_port()}
    with socket.create_server(("127.0.0.1", ports[taken])):
        done = subprocess.run(
            [sys.executable, "-m", "services.postprocess"],
            cwd=REPO,
            env={**os.environ, **{f"SCOREGRAPH_POSTPROCESS_{k}": str(v) for k, v in ports.items()}},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    [error] = [line for line in map(json.loads, done.stdout.splitlines()) if line["level"] == "error"]
    assert error["event"] == "cannot listen" and f"127.0.0.1:{ports[taken]}" in error["reason"]
