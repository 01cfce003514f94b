import sys
import time

import psutil
import pytest

from services.bench.processes import Spawned, cpu_by_part, cpu_seconds, part_of


def test_cpu_of_a_process_that_exited_under_the_tree_still_counts(tmp_path):
    # A busy child (a crashed, restarted replica, say) that its parent has reaped by the time we look.
    busy = f"{sys.executable} -c 'sum(i * i for i in range(3_000_000))'"
    tree = Spawned(["sh", "-c", f"{busy}; sleep 30"], {}, tmp_path / "log")
    try:
        deadline = time.monotonic() + 30
        while not [c for c in tree.tree.children() if c.name() == "sleep"]:
            assert time.monotonic() < deadline, "the busy child never finished"
            time.sleep(0.05)
        # The busy child is gone; only the shell and its sleep are left, which used next to nothing.
        assert all(c.name() == "sleep" for c in tree.tree.children())
        assert cpu_seconds(tree.tree) >= 0.05
    finally:
        tree.stop()


def test_cpu_is_told_apart_by_the_part_of_the_graph_each_process_is(tmp_path):
    # A busy process whose command line is the gateway's, still running, under a shell.
    busy = "import time; sum(i * i for i in range(3_000_000)); print('done', flush=True); time.sleep(30)"
    tree = Spawned(["sh", "-c", f'{sys.executable} -c "{busy}" -m services.gateway'], {}, tmp_path / "log")
    try:
        deadline = time.monotonic() + 30
        while "done" not in tree.log_path.read_text():
            assert time.monotonic() < deadline, "the busy process never finished its work"
            time.sleep(0.05)
        parts = cpu_by_part(tree.tree)
        assert parts["gateway"] >= 0.05
        assert parts.get("other", 0.0) < parts["gateway"]
        assert sum(parts.values()) == pytest.approx(cpu_seconds(tree.tree), abs=0.02)
    finally:
        tree.stop()


@pytest.mark.parametrize(
    ("command", "part"),
    [
        ("/repo/.venv/bin/python -m services.features", "features"),
        (
            "/repo/.venv-triton/site-packages/pytriton/tritonserver/bin/tritonserver --grpc-port=1",
            "tritonserver",
        ),
        ("/repo/.venv-triton/backends/python/triton_python_backend_stub /m/model.py shm 1 0", "triton stub"),
        # Triton's watcher, which reaps it: a crashed server's CPU stays tritonserver's.
        ("/repo/.venv/bin/python -m services.predict.tritonserver --grpc-port=1", "tritonserver"),
        ("/repo/.venv/bin/python -m services.bench.tracing", "receiver"),
        # A respawning shell is its service: a crashed one's CPU is in the shell's reaped children.
        ("/bin/sh -c while true; do python -m services.gateway; done", "gateway"),
        ("/repo/.venv/bin/python -m services.stack up", "other"),
    ],
)
def test_a_process_is_the_part_its_command_line_names(command, part):
    assert part_of(command.split()) == part


# What is left of a Triton whose server was killed: its stub, its parent gone, is no longer under the tree,
# and it outlives SIGTERM. In the stack's own group, or in a session one of its processes started (as honcho
# starts every service of the stack, the session's leader a respawning shell that outlives the server).
ORPHAN_IN_OWN_GROUP = 'sh -c "{inner}"; sleep 300'
ORPHAN_IN_A_CHILDS_SESSION = (
    """setsid sh -c 'sh -c "{inner}"; while kill -0 $PPID; do sleep 0.1; done' & sleep 300"""
)


@pytest.mark.parametrize("where", [ORPHAN_IN_OWN_GROUP, ORPHAN_IN_A_CHILDS_SESSION], ids=["group", "session"])
def test_stop_kills_a_process_of_its_groups_whose_parent_died_first(tmp_path, where):
    pid_file = tmp_path / "orphan.pid"
    inner = f"trap '' TERM; sleep 300 & echo \\$! > {pid_file}"
    spawned = Spawned(["sh", "-c", where.format(inner=inner)], {}, tmp_path / "log")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the orphan never started"
        time.sleep(0.05)
    orphan = psutil.Process(int(pid_file.read_text()))
    assert orphan.ppid() != spawned.process.pid and orphan not in spawned.tree.children(recursive=True)

    spawned.stop(timeout_s=5)

    try:
        assert spawned.survivors == [f"sleep ({orphan.pid})"]
        deadline = time.monotonic() + 5
        while orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE:  # killed, reaped by init
            assert time.monotonic() < deadline, "the orphan was not killed"
            time.sleep(0.05)
    finally:
        if orphan.is_running():
            orphan.kill()
