import sys
import time
from types import SimpleNamespace

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


async def test_triton_tracing_is_set_where_it_can_be_and_the_rest_named():
    # Nothing listens on ports 9 and 19 (the replicas' gRPC ports here), as a replica restarting after a
    # crash answers nothing for a while.
    stack = SimpleNamespace(settings=StackSettings(triton_port=9))

    assert await set_triton_tracing(stack, on=False) == ["triton-0", "triton-1"]
