import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from services.bench.processes import stack_ports, start_stack
from services.stack.topology import (
    REPO,
    StackSettings,
    busy_ports,
    listening_ports,
    process_env,
    processes,
)
from tests.ports import STACK_BASES


def test_the_gateway_is_wired_to_every_replica_and_no_two_processes_share_a_port():
    settings = StackSettings(features_replicas=2, postprocess_replicas=3, triton_replicas=2)
    stack = {p.name: p for p in processes(settings)}

    gateway = stack["gateway"].env
    assert gateway["SCOREGRAPH_GATEWAY_FEATURES_ADDRESSES"] == "127.0.0.1:50061,127.0.0.1:50062"
    assert gateway["SCOREGRAPH_GATEWAY_POSTPROCESS_ADDRESSES"].count(",") == 2
    assert gateway["SCOREGRAPH_GATEWAY_TRITON_ADDRESSES"] == "127.0.0.1:8001,127.0.0.1:8011"

    ports = []
    for process in stack.values():
        ports += [int(v) for k, v in process.env.items() if k.endswith("PORT")]
        argv = process.argv
        ports += [int(argv[i + 1]) for i, a in enumerate(argv) if a.endswith("-port")]
    assert len(ports) == len(set(ports)), sorted(ports)
    assert sorted(ports) == sorted(listening_ports(settings))


def test_the_gateway_serves_its_metrics_on_the_stacks_first_metrics_port():
    # As documented, and as each service's own default (gateway 9464, features 9465, postprocess 9466):
    # 9464 was features-0's, the gateway's the last of them.
    stack = processes(StackSettings(metrics_port=9464, features_replicas=2, postprocess_replicas=2))
    metrics = {p.name: int(v) for p in stack for k, v in p.env.items() if k.endswith("_METRICS_PORT")}

    assert metrics == {
        "gateway": 9464,
        "features-0": 9465,
        "features-1": 9466,
        "postprocess-0": 9467,
        "postprocess-1": 9468,
    }


def test_every_process_has_a_health_address_to_wait_on():
    stack = processes(StackSettings())
    assert [p.name for p in stack] == [
        "triton-0",
        "triton-1",
        "features-0",
        "features-1",
        "postprocess-0",
        "postprocess-1",
        "gateway",
    ]
    assert all(p.health_address.startswith("127.0.0.1:") for p in stack)


@pytest.mark.parametrize(("replica", "prefix"), [("features-1", "FEATURES"), ("triton-0", "TRITON")])
def test_only_the_faulty_replica_gets_the_fault_settings(replica, prefix):
    settings = StackSettings(faulty_replica=replica, fault_delay_ms=50, fault_delay_share=0.05)

    faulted = {p.name: {k: v for k, v in p.env.items() if "_FAULT_" in k} for p in processes(settings)}

    assert faulted.pop(replica) == {
        f"SCOREGRAPH_{prefix}_FAULT_DELAY_MS": "50.0",
        f"SCOREGRAPH_{prefix}_FAULT_DELAY_SHARE": "0.05",
        f"SCOREGRAPH_{prefix}_FAULT_ERROR_SHARE": "0.0",
        f"SCOREGRAPH_{prefix}_FAULT_HANG": "false",
    }
    assert not any(faulted.values())


@pytest.mark.parametrize("replica", ["features-0", "triton-1"])
def test_a_killed_or_crashed_replica_is_respawned_and_any_other_exit_ends_it(tmp_path, replica):
    [process] = [p for p in processes(StackSettings()) if p.name == replica]
    runs = tmp_path / "runs"
    # Killed with SIGKILL the first time, crashes with SIGSEGV the second, exits 3 the third.
    child = (
        f"echo run >> {runs}; n=$(wc -l < {runs}); [ $n -ge 3 ] && exit 3; "
        "[ $n -eq 2 ] && kill -SEGV $$; kill -9 $$"
    )
    argv = [*process.argv[: process.argv.index("respawn") + 1], "sh", "-c", child]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)

    assert done.returncode == 3
    assert runs.read_text().count("run") == 3
    # Each restart says when (UTC) and why.
    restarts = done.stdout.splitlines()
    assert len(restarts) == 2, done.stdout
    for line, status in zip(restarts, (137, 139), strict=True):
        assert re.fullmatch(rf"\d\d:\d\d:\d\dZ respawning .* \(it died with status {status}\)", line), line


def test_without_respawning_a_replica_runs_as_itself():
    [process] = [p for p in processes(StackSettings(respawn_killed_replicas=False)) if p.name == "triton-0"]
    assert process.argv[:3] == [sys.executable, "-m", "services.predict.tritonserver"]


@contextlib.contextmanager
def a_port_taken(which: str) -> Iterator[tuple[StackSettings, dict[str, str], int]]:
    """A stack's settings (and their environment) on a range of its own, one of whose ports, `which`,
    something else listens on while the block runs."""
    settings = StackSettings(**{k.lower(): v for k, v in stack_ports(STACK_BASES["port in use"]).items()})
    assert busy_ports(settings) == []
    port = getattr(settings, which)
    env = {
        f"SCOREGRAPH_STACK_{k.upper()}": str(v)
        for k, v in settings.model_dump().items()
        if k.endswith("port")
    }
    with socket.socket() as taken:
        # As a server binds (and as busy_ports probes): a connection of an earlier test that used this port
        # and lingers in TIME_WAIT must not stop the bind (it did once in CI: "Address already in use").
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((settings.host, port))
        taken.listen()
        yield settings, {**os.environ, **env}, port


def test_a_port_in_use_is_found_and_the_stack_refuses_to_start_on_it():
    with a_port_taken("metrics_port") as (settings, env, port):
        assert busy_ports(settings) == [port]
        done = subprocess.run(
            [sys.executable, "-m", "services.stack", "up"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert str(port) in done.stderr and "in use" in done.stderr


def test_the_demo_refuses_to_run_beside_another_stack_rather_than_score_through_it():
    # Another stack's gateway on the demo's port answered the demo's health checks and calls while the
    # demo's own stack refused to start, and the demo showed that stack's verdicts as its own, exit 0.
    with a_port_taken("gateway_port") as (_, env, port):
        done = subprocess.run(
            [sys.executable, "-m", "services.stack", "demo"],
            cwd=REPO,
            env={**env, "SCOREGRAPH_STACK_READY_TIMEOUT_S": "20"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stdout
    assert str(port) in done.stdout and "in use" in done.stdout
    assert "Scoring" not in done.stdout


@pytest.mark.parametrize("command", ["up", "demo"])
def test_a_refused_stack_setting_is_named_before_anything_starts(command):
    done = subprocess.run(
        [sys.executable, "-m", "services.stack", command],
        cwd=REPO,
        env={**os.environ, "SCOREGRAPH_STACK_FEATURES_REPLICAS": "two"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "Invalid setting SCOREGRAPH_STACK_FEATURES_REPLICAS: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_benchmark_or_test_stack_refuses_ports_in_use_before_starting(tmp_path):
    with a_port_taken("gateway_port") as (settings, _, port):
        ports = {k.upper(): v for k, v in settings.model_dump().items() if k.endswith("port")}
        with pytest.raises(RuntimeError, match=f"cannot start a stack: ports \\[{port}\\]"):
            start_stack(tmp_path / "stack.log", {}, ports)
    assert not (tmp_path / "stack.log").exists()


def test_loopback_never_goes_through_a_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "example.com")
    monkeypatch.delenv("NO_PROXY", raising=False)
    env = process_env(processes(StackSettings())[0])
    for name in ("no_proxy", "NO_PROXY"):
        hosts = env[name].split(",")
        assert {"127.0.0.1", "localhost"} <= set(hosts)
    assert "example.com" in env["no_proxy"].split(",")
