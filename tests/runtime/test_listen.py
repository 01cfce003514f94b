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


@pytest.mark.parametrize("service", ["gateway", "features", "postprocess"])
def test_a_refused_setting_ends_a_service_with_a_line_naming_the_variable_not_the_value(service) -> None:
    prefix = f"SCOREGRAPH_{service.upper()}_"
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=REPO,
        env={**os.environ, f"{prefix}GRACE_PERIOD_S": "4111111111111111", f"{prefix}PORT": "port-4111"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "4111" not in output
    errors = [line for line in map(json.loads, done.stdout.splitlines()) if line["level"] == "error"]
    assert [(e["event"], e["variable"], e["service"]) for e in errors] == [
        ("invalid setting", f"{prefix}PORT", service),
    ]


def test_an_otlp_export_a_service_cannot_make_ends_it_naming_the_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.postprocess"],
        cwd=REPO,
        env={
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in map(json.loads, done.stdout.splitlines()) if line["level"] == "error"]
    assert [(e["event"], e["variable"]) for e in errors] == [
        ("invalid setting", "OTEL_EXPORTER_OTLP_PROTOCOL")
    ]
