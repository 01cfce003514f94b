"""Faults over the real local stack: a slow replica, a hung one, a killed one, a drained one, a 1 ms deadline.

The tests assert the mechanism (the gateway's counters, every call's outcome), never latency figures: those
are for `python -m services.stack.bench_hedging`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scoregraph.gateway.v1 import gateway_pb2

from services.stack.bench_hedging import (
    SLOW_FEATURES_REPLICA,
    LocalStack,
    counter,
    drive,
    gateway_counters,
    hop_summary,
    metrics_counters,
    running,
    stack_ports,
)
from services.stack.topology import processes
from services.stack.traffic import score_request

pytestmark = pytest.mark.e2e

# One Triton replica: these tests are about the features and postprocess hops, and the machine is small.
ONE_TRITON = {"SCOREGRAPH_STACK_TRITON_REPLICAS": "1"}


@pytest.fixture(scope="module")
def requests(live) -> list[gateway_pb2.ScoreRequest]:
    return [score_request(row) for row in live.sample(600, random_state=17).itertuples(index=False)]


def replica_process(stack: LocalStack, name: str) -> psutil.Process:
    """The service process (not its respawning shell) of replica `name`, found by the port it listens on."""
    port = int(next(p for p in processes(stack.settings) if p.name == name).health_address.rpartition(":")[2])
    for child in psutil.Process(stack.process.pid).children(recursive=True):
        try:
            if any(
                c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")
            ):
                return child
        except psutil.NoSuchProcess:
            continue
    raise LookupError(f"no process listens on {name}'s port {port}")


def health(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
            )
        except grpc.RpcError:
            return None


class Load:
    """Score calls from a background thread until stopped; every call's outcome is kept."""

    def __init__(self, stack: LocalStack, requests, *, concurrency: int = 4, timeout_s: float = 2.0) -> None:
        self.outcomes: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stack.gateway, requests, concurrency, timeout_s)
        )
        self.sent = 0

    def _run(self, address, requests, concurrency, timeout_s) -> None:
        while not self._stop.is_set():
            batch = requests[: concurrency * 5]
            self.sent += len(batch)
            self.outcomes += drive(address, batch, concurrency=concurrency, timeout_s=timeout_s)
            requests = requests[len(batch) :] + batch

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# --- one slow features replica (5 % of its calls 50 ms late); killed replicas come back ----------------


@pytest.fixture(scope="module")
def slow_replica_stack(tmp_path_factory) -> Iterator[LocalStack]:
    env = {**ONE_TRITON, **SLOW_FEATURES_REPLICA, "SCOREGRAPH_STACK_RESPAWN_KILLED_REPLICAS": "true"}
    with running(tmp_path_factory.mktemp("slow") / "stack.log", env, stack_ports(54000)) as stack:
        yield stack


def test_a_slow_replica_is_hedged_around_within_the_budget(slow_replica_stack, requests):
    stack = slow_replica_stack
    before = gateway_counters(stack.gateway_metrics_url)

    outcomes = drive(stack.gateway, requests[:400], concurrency=4, timeout_s=2.0)

    features = hop_summary(before, gateway_counters(stack.gateway_metrics_url), "features")
    assert Counter((o.code, o.degraded) for o in outcomes) == {("OK", False): 400}
    assert features["calls"] == 400
    assert features["hedges_sent"] > 0 and features["hedges_won"] > 0, features
    assert features["cancelled"] > 0, features  # the losers
    # The hedge budget: 0.1 per call, plus a burst of 10 (which may have filled up since the last run).
    assert features["hedges_sent"] <= 0.1 * features["calls"] + 10, features
    assert features["retries"] == 0, features


def test_a_one_millisecond_deadline_fails_fast_and_starts_no_hop(slow_replica_stack, requests):
    stack = slow_replica_stack
    before = gateway_counters(stack.gateway_metrics_url)
    started = time.monotonic()

    outcomes = drive(stack.gateway, requests[:20], concurrency=1, timeout_s=0.001)

    assert time.monotonic() - started < 2.0
    assert {o.code for o in outcomes} == {"DEADLINE_EXCEEDED"}
    after = gateway_counters(stack.gateway_metrics_url)
    for hop in ("features", "predict", "postprocess"):
        assert hop_summary(before, after, hop)["attempts"] == 0, hop


def test_a_replica_killed_under_load_fails_no_call_and_rejoins(slow_replica_stack, requests):
    stack = slow_replica_stack
    victim = replica_process(stack, "features-0")
    address = next(p.health_address for p in processes(stack.settings) if p.name == "features-0")

    with Load(stack, requests) as load:
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        time.sleep(1.0)

    assert load.outcomes
    assert Counter((o.code, o.degraded) for o in load.outcomes) == {("OK", False): len(load.outcomes)}

    deadline = time.monotonic() + 60
    while health(address) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.25)
    assert replica_process(stack, "features-0").pid != victim.pid
    # Back in the rotation: the gateway's calls reach it again (its own RPC counter, on its /metrics)
    # once the gateway's channel has reconnected, within a second or two.
    metrics_url = replica_metrics_url(stack, "features-0")
    deadline = time.monotonic() + 20
    while served_features(metrics_url) < 10:
        assert time.monotonic() < deadline, "the respawned replica gets no calls"
        drive(stack.gateway, requests[:20], concurrency=2, timeout_s=2.0)


def served_features(metrics_url: str) -> float:
    counters = metrics_counters(metrics_url)
    return counter(counters, "scoregraph_rpc_server_requests_total", rpc_method="GetFeatures", grpc_code="OK")


def replica_metrics_url(stack: LocalStack, name: str) -> str:
    process = next(p for p in processes(stack.settings) if p.name == name)
    port = next(v for k, v in process.env.items() if k.endswith("_METRICS_PORT"))
    return f"http://{stack.settings.host}:{port}/metrics"


def test_sigterm_to_a_replica_under_load_loses_no_call(slow_replica_stack, requests):
    # Last in the module: a replica that exits on SIGTERM makes the supervisor stop the whole stack.
    stack = slow_replica_stack
    victim = replica_process(stack, "features-0")
    address = next(p.health_address for p in processes(stack.settings) if p.name == "features-0")
    watched: list[int] = []

    def watch_health() -> None:
        # A Watch stream sees NOT_SERVING while the server drains; a poll could fall between the two.
        with grpc.insecure_channel(address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            try:
                for reply in stream:
                    watched.append(reply.status)
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        stream.cancel()
            except grpc.RpcError:
                pass

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    with Load(stack, requests, timeout_s=5.0) as load:
        time.sleep(1.0)
        victim.send_signal(signal.SIGTERM)
        victim.wait(timeout=30)
        exited = time.monotonic()
        time.sleep(0.5)
    watcher.join(timeout=30)

    assert watched[:1] == [health_pb2.HealthCheckResponse.SERVING]
    assert health_pb2.HealthCheckResponse.NOT_SERVING in watched, watched
    # Every call sent has a definite outcome: an answer or a status code, none lost or left hanging. Once
    # the whole stack stops, calls are refused (UNAVAILABLE) or cut at the end of the gateway's own drain
    # (CANCELLED).
    assert len(load.outcomes) == load.sent
    codes = Counter(o.code for o in load.outcomes)
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes
    # Until the replica had drained and exited (then the supervisor stops the whole stack), every call was
    # answered. While it drains, calls routed to it are refused and retried on the other replica; when the
    # retry budget (10% of calls) runs dry a few answer UNCERTAIN (degraded) instead: a definite answer still.
    before_exit = [o for o in load.outcomes if o.finished_at < exited]
    assert before_exit
    assert {o.code for o in before_exit} == {"OK"}
    assert sum(o.degraded for o in before_exit) <= 0.05 * len(before_exit)


# --- one hung features replica, and every postprocess replica hung ---------------------------------------


@pytest.fixture(scope="module")
def hung_stack(tmp_path_factory) -> Iterator[LocalStack]:
    env = {
        **ONE_TRITON,
        "SCOREGRAPH_STACK_FAULTY_REPLICA": "features-1",
        "SCOREGRAPH_STACK_FAULT_HANG": "true",
        # Every replica of the service: the whole postprocess hop hangs.
        "SCOREGRAPH_POSTPROCESS_FAULT_HANG": "true",
        # Time the gateway keeps for answering after a hop times out: on a small machine running every
        # process of the stack, tens of milliseconds at the tail.
        "SCOREGRAPH_GATEWAY_HOP_RESERVE_MS": "50",
    }
    with running(tmp_path_factory.mktemp("hung") / "stack.log", env, stack_ports(55000)) as stack:
        yield stack


def test_hung_replicas_and_a_hung_hop_still_get_every_call_a_definite_answer_in_time(hung_stack, requests):
    stack = hung_stack
    before = gateway_counters(stack.gateway_metrics_url)

    # The client's deadline is the gateway's budget: an answer that came at all came before it.
    outcomes = drive(stack.gateway, requests[:40], concurrency=4, timeout_s=0.5)

    assert Counter((o.code, o.degraded) for o in outcomes) == {("OK", True): 40}
    after = gateway_counters(stack.gateway_metrics_url)
    features = hop_summary(before, after, "features")
    assert features["hedges_won"] > 0, features  # around the hung features replica
    degraded = counter(after, "scoregraph_degraded_verdicts_total", hop="postprocess") - counter(
        before, "scoregraph_degraded_verdicts_total", hop="postprocess"
    )
    assert degraded == 40
