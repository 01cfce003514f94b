import contextlib
import signal
import subprocess
import sys

import psutil
import pytest

from services.stack.supervisor import command_line
from services.stack.topology import REPO, StackProcess, StackSettings, processes

SPEAKS = StackProcess(
    "features-1",
    [sys.executable, "-c", "import sys; print('a line', flush=True); print('an error', file=sys.stderr)"],
)


def test_without_a_log_dir_the_supervisor_reads_what_the_process_prints():
    run = subprocess.run(command_line(SPEAKS, None), shell=True, capture_output=True, text=True, check=True)

    assert run.stdout == "a line\n"
    assert run.stderr == "an error\n"


def test_with_a_log_dir_both_streams_go_to_the_process_own_file_and_none_to_the_supervisor(tmp_path):
    logs = tmp_path / "logs with a space"
    logs.mkdir()
    for _ in range(2):
        run = subprocess.run(
            command_line(SPEAKS, logs), shell=True, capture_output=True, text=True, check=True
        )
        assert (run.stdout, run.stderr) == ("", "")

    # Appended, so a respawned process adds to its predecessor's file.
    assert (logs / "features-1.log").read_text().splitlines() == ["a line", "an error"] * 2


def test_the_stack_processes_command_lines_keep_their_arguments_with_a_log_dir(tmp_path):
    for process in processes(StackSettings()):
        line = command_line(process, tmp_path)
        assert line.startswith(f"exec {command_line(process, None)} >>")
        assert line.endswith(f"{process.name}.log 2>&1")


def test_with_a_log_dir_the_supervisor_watches_the_process_itself_not_a_shell(tmp_path):
    # The supervisor runs each command line through `sh -c` and signals what it started: that must be the
    # process, so that one still draining after SIGTERM is waited for, and killed when it does not end.
    prints_its_pid = StackProcess("triton-1", [sys.executable, "-c", "import os; print(os.getpid())"])
    started = subprocess.Popen(command_line(prints_its_pid, tmp_path), shell=True)
    assert started.wait(timeout=30) == 0

    assert (tmp_path / "triton-1.log").read_text().split() == [str(started.pid)]


# What the benchmark and the test suite do: start a process in a session of its own (out of the terminal's
# reach, as the stacks are) and stop it on the way out, synchronously or from asyncio.run.
_STARTS_AND_STOPS = """
import asyncio, sys, time
from pathlib import Path
from services.bench.processes import Spawned
from services.stack.supervisor import interrupt_on_hangup_or_sigterm

interrupt_on_hangup_or_sigterm()
started = Spawned(["sleep", "300"], {}, Path(sys.argv[2]))
try:
    print(started.process.pid, flush=True)
    asyncio.run(asyncio.sleep(60)) if sys.argv[1] == "asyncio" else time.sleep(60)
finally:
    started.stop()
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
@pytest.mark.parametrize("waits_in", ["time.sleep", "asyncio"])
def test_hangup_or_sigterm_ends_a_run_as_ctrl_c_does_stopping_what_it_started(tmp_path, signum, waits_in):
    run = subprocess.Popen(
        [sys.executable, "-c", _STARTS_AND_STOPS, waits_in, str(tmp_path / "sleep.log")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    started = None
    try:
        started = psutil.Process(int(run.stdout.readline()))
        run.send_signal(signum)
        assert run.wait(timeout=30) != 0
        assert not started.is_running()
    finally:
        run.kill()
        run.wait()
        if started is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                started.kill()
