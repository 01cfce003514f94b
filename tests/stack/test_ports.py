"""The fixed ports the test suite's and the benchmark's processes listen on: clear of the ports the machine
hands out as the source ports of outgoing connections, and of each other."""

from pathlib import Path

import pytest

from services.bench import metadata_cost
from services.bench import processes as bench
from services.stack.topology import StackSettings, listening_ports
from tests.ports import STACK_BASES

#: What Linux uses when /proc does not say.
LINUX_EPHEMERAL = (32768, 60999)

#: The most replicas a test or benchmark stack runs (the topology's own limits are checked elsewhere).
LARGEST = {"features_replicas": 3, "postprocess_replicas": 3, "triton_replicas": 3}


def ephemeral_range() -> tuple[int, int]:
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not path.exists():
        return LINUX_EPHEMERAL
    low, high = map(int, path.read_text().split())
    return low, high


def stack_listens_on(first: int) -> set[int]:
    """Every port a stack started on `first` listens on, with as many replicas as any test runs, and the
    second gateway the benchmark's hedging part starts beside a stack (first + 52, first + 469)."""
    ports = {k.lower(): v for k, v in bench.stack_ports(first).items()}
    return {*listening_ports(StackSettings(**ports, **LARGEST)), first + 52, first + 469}


STACKS = {
    **{f"test: {name}": stack_listens_on(first) for name, first in STACK_BASES.items()},
    **{f"bench: {name}": stack_listens_on(first) for name, first in bench.STACK_SLOTS.items()},
    "bench: the rest": {
        bench.MONOLITH_PORT,
        bench.BARE_GRPC_PORT,
        bench.FEAST_SERVER_PORT,
        bench.OTLP_GRPC_PORT,
        bench.OTLP_HTTP_PORT,
        *(metadata_cost.port_of(i) + j for i in range(len(metadata_cost.MODES)) for j in (0, 1)),
        *(bench.TRITON_TRACEPARENT_PORT + i for i in range(3)),
    },
}


@pytest.mark.parametrize("name", STACKS)
def test_no_fixed_port_is_one_an_outgoing_connection_could_hold(name):
    low, high = ephemeral_range()
    inside = sorted(p for p in STACKS[name] if low <= p <= high)
    assert inside == [], f"{name}: {inside} lie in the ephemeral range {low}-{high}"
    # The ports `make up` uses by default are left out: the machine running the tests may have one up.
    defaults = set(listening_ports(StackSettings()))
    assert not STACKS[name] & defaults


def test_no_two_stacks_share_a_port():
    seen: dict[int, str] = {}
    for name, ports in STACKS.items():
        for port in ports:
            assert port not in seen, f"{port}: {seen.get(port)} and {name}"
            seen[port] = name
