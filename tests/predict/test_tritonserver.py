import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from services.predict.tritonserver import (
    TRITON_ENV_VARIABLE,
    ServerCommand,
    TritonInstallation,
    remove_stale_shm,
    run_watched,
    server_command,
    shm_prefix,
)


def test_runs_with_the_triton_environment_first_on_path(tmp_path):
    installation = TritonInstallation.locate()

    command = server_command(tmp_path, grpc_port=1, http_port=2, metrics_port=3, installation=installation)

    assert os.access(command.argv[0], os.X_OK)
    assert f"--model-repository={tmp_path}" in command.argv
    assert command.env["PATH"].split(os.pathsep)[0] == str(installation.env / "bin")
    assert command.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(installation.libraries)
    assert "PYTHONPATH" not in command.env


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ({}, ["127.0.0.1"] * 3),
        ({"host": "0.0.0.0"}, ["0.0.0.0"] * 3),
        # tritonserver joins the gRPC address and port with a colon, so an IPv6 one keeps its brackets.
        ({"host": "::1"}, ["[::1]", "::1", "::1"]),
    ],
)
def test_every_server_binds_the_host_asked_for_loopback_unless_told(tmp_path, host, expected):
    command = server_command(tmp_path, grpc_port=1, http_port=2, metrics_port=3, **host)

    for server, address in zip(("grpc", "http", "metrics"), expected, strict=True):
        assert f"--{server}-address={address}" in command.argv


def test_backend_directory_pairs_the_python_backend_with_the_stub_for_its_python():
    installation = TritonInstallation.locate()

    backends = installation.backend_directory()
    again = installation.backend_directory()

    stub = backends / "python" / "triton_python_backend_stub"
    assert again == backends
    assert (backends / "python" / "libtriton_python.so").exists()
    assert stub.resolve().parent.name == installation.python_version
    assert os.access(stub, os.X_OK)


def test_explicit_mode_loads_the_whole_repository_at_start(tmp_path):
    command = server_command(
        tmp_path, grpc_port=1, http_port=2, metrics_port=3, model_control_mode="explicit"
    )

    assert "--load-model=*" in command.argv


def test_names_the_variable_when_no_triton_environment_is_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=TRITON_ENV_VARIABLE):
        TritonInstallation.locate(tmp_path)


def test_a_killed_servers_shared_memory_is_removed_and_no_other_servers(tmp_path):
    mine = [tmp_path / f"{shm_prefix(8001)}{n}" for n in ("a1", "b2")]
    others = [tmp_path / f"{shm_prefix(8011)}c3", tmp_path / "sem.mp-xyz"]
    for region in mine + others:
        region.write_bytes(b"\0")

    assert sorted(remove_stale_shm(8001, shm=tmp_path)) == sorted(mine)
    assert sorted(tmp_path.iterdir()) == sorted(others)


# --- the watchdog around tritonserver: a stand-in process plays the server (pure process handling) ---------


def watched(script: str, grace_s: float = 0.2) -> tuple[int, float]:
    started = time.monotonic()
    status = run_watched(ServerCommand(["/bin/sh", "-c", script], dict(os.environ)), grace_s=grace_s)
    return status, time.monotonic() - started


def test_a_server_that_hangs_after_a_fatal_signal_is_killed_and_reported_crashed(capfd):
    # What tritonserver printed before hanging in its crash handler (seen under traced load).
    status, took_s = watched('echo "Signal (11) received."; exec sleep 60')

    assert status == 128 + signal.SIGSEGV
    assert took_s < 10
    assert "Signal (11) received." in capfd.readouterr().out


def test_a_server_that_exits_on_its_own_keeps_its_status():
    assert watched("exit 3")[0] == 3
    assert watched("kill -KILL $$")[0] == 128 + signal.SIGKILL


def test_a_killed_server_is_reported_even_while_its_children_hold_its_output_open():
    # The Python backend's stubs inherit tritonserver's stdout and outlive it for a while (here 5 s, after
    # which the stand-in's child is gone too).
    status, took_s = watched("sleep 5 & kill -KILL $$")

    assert status == 128 + signal.SIGKILL
    assert took_s < 4


def watched_adopting(server_script: str, end_orphans_after_s: float) -> subprocess.CompletedProcess:
    """`run_watched` adopting the stand-in's orphans, in a process of its own: it takes all its children
    for the server's."""
    code = (
        "import os, sys\n"
        "from services.predict.tritonserver import ServerCommand, run_watched\n"
        f"command = ServerCommand(['/bin/sh', '-c', {server_script!r}], dict(os.environ))\n"
        f"sys.exit(run_watched(command, end_orphans_after_s={end_orphans_after_s}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_what_a_killed_server_leaves_running_is_killed_before_its_status_is_given(tmp_path):
    # The stand-in for a stub that hangs after its server was killed: it outlives the server, deaf to SIGTERM.
    pid_file = tmp_path / "stub.pid"
    script = f"(trap '' TERM; exec sleep 60) & echo $! >{pid_file}; kill -KILL $$"
    started = time.monotonic()
    done = watched_adopting(script, end_orphans_after_s=0.5)
    took_s = time.monotonic() - started
    stub = int(pid_file.read_text())
    try:
        assert done.returncode == 128 + signal.SIGKILL
        assert not psutil.pid_exists(stub) or psutil.Process(stub).status() == psutil.STATUS_ZOMBIE
        assert "tritonserver left 1 process(es) running 0.5 s after it: killing" in done.stdout
        assert took_s < 10
    finally:
        with contextlib.suppress(psutil.Error):  # gone, or a zombie its new parent has yet to reap
            if "sleep" in psutil.Process(stub).cmdline():
                os.kill(stub, signal.SIGKILL)


def test_what_a_killed_server_leaves_is_let_exit_on_its_own_first():
    started = time.monotonic()
    done = watched_adopting("sleep 0.3 & kill -KILL $$", end_orphans_after_s=20)

    assert (done.returncode, "killing" in done.stdout) == (128 + signal.SIGKILL, False)
    assert time.monotonic() - started < 15


def test_a_graceful_stop_is_not_taken_for_a_crash():
    # tritonserver prints the same line for SIGTERM, then drains and exits 0.
    status, took_s = watched('echo "Signal (15) received."; sleep 0.5; exit 0')

    assert (status, took_s < 10) == (0, True)
