import sys
import time
from types import SimpleNamespace

import psutil

from services.bench.processes import Spawned, cpu_seconds
from services.bench.tracing import set_triton_tracing
from services.stack.topology import StackSettings


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


def test_stop_kills_a_process_of_its_group_whose_parent_died_first(tmp_path):
    # As a Triton stub does when its server is killed: its parent gone, it is no longer under the tree,
    # and it outlives SIGTERM.
    pid_file = tmp_path / "orphan.pid"
    inner = f"trap '' TERM; sleep 300 & echo \\$! > {pid_file}"
    spawned = Spawned(["sh", "-c", f'sh -c "{inner}"; sleep 300'], {}, tmp_path / "log")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the orphan never started"
        time.sleep(0.05)
    orphan = psutil.Process(int(pid_file.read_text()))
    assert orphan.ppid() != spawned.process.pid and orphan not in spawned.tree.children(recursive=True)

    spawned.stop(timeout_s=5)

    assert spawned.survivors == [f"sleep ({orphan.pid})"]
    deadline = time.monotonic() + 5
    while orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE:  # killed, reaped by init in time
        assert time.monotonic() < deadline, "the orphan was not killed"
        time.sleep(0.05)


async def test_triton_tracing_is_set_where_it_can_be_and_the_rest_named():
    # Nothing listens on ports 9 and 19 (the replicas' gRPC ports here), as a replica restarting after a
    # crash answers nothing for a while.
    stack = SimpleNamespace(settings=StackSettings(triton_port=9))

    assert await set_triton_tracing(stack, on=False) == ["triton-0", "triton-1"]
