import subprocess
import sys

from services.stack.supervisor import command_line
from services.stack.topology import StackProcess, StackSettings, processes

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
