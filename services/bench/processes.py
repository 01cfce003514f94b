"""The processes a benchmark starts: the embedded stack, the monolith, Feast's server, a trace receiver.

Every one runs in a session of its own and is stopped as a group, then whatever it left behind (honcho puts
each of the stack's services in a session of its own) is killed, so an error in the middle of a run leaves
nothing listening. All of them listen in 30000-32767, away from `make up`'s ports and the test suite's, and
below Linux's ephemeral ports (32768-60999), which any outgoing connection may take as its source port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil

from services.runtime.settings import host_port
from services.stack.supervisor import ports_in_use, serving, wait_until_serving
from services.stack.topology import REPO, StackSettings, process_env, processes

#: First port of each benchmark stack: a stack takes the 470 ports from there (see stack_ports), a second
#: gateway on it first + 52 and first + 469 (see hedging.measure_slow_replica).
STACK_SLOTS = {"graph": 30000, "slow": 30500, "untraced": 31000}
MONOLITH_PORT = 32091
BARE_GRPC_PORT = 32095
FEAST_SERVER_PORT = 32566
OTLP_GRPC_PORT = 32517
OTLP_HTTP_PORT = 32518
#: First of the metadata cost's five postprocess servers (services.bench.metadata_cost): 32600-32641.
METADATA_COST_PORT = 32600
#: tritonserver's gRPC, HTTP and metrics ports in services.bench.triton_traceparent: 32650-32652.
TRITON_TRACEPARENT_PORT = 32650


def stack_ports(first: int) -> dict[str, int]:
    """Ports of a stack of its own, from `first` up (`first + 470` at most)."""
    return {
        "GATEWAY_PORT": first + 51,
        "FEATURES_PORT": first + 61,
        "POSTPROCESS_PORT": first + 71,
        "TRITON_PORT": first + 1,
        "METRICS_PORT": first + 464,
    }


def cpu_seconds(root: psutil.Process) -> float:
    """User and system CPU of `root` and every process under it, those that have exited included (their
    parent has reaped them: a replica restarted after a crash still counts what it used)."""
    return sum(cpu_by_part(root).values())


#: What a process is, by a piece of its command line, first match wins: the part of the graph its CPU is
#: shown under (cpu_by_part).
_PARTS = (
    ("triton_python_backend_stub", "triton stub"),
    ("bin/tritonserver", "tritonserver"),
    # The watcher that runs tritonserver (and its respawning shell) reaps it: a crashed server's CPU is in
    # their reaped children's, which must stay tritonserver's.
    ("-m services.predict.tritonserver", "tritonserver"),
    ("-m services.gateway", "gateway"),
    ("-m services.features", "features"),
    ("-m services.postprocess", "postprocess"),
    ("-m services.bench.tracing", "receiver"),
)


def part_of(command: list[str]) -> str:
    """The part of the graph a process with this command line is (a service's respawning shell and
    Triton's watcher count as theirs); `other` for the supervisor and whatever else."""
    line = " ".join(command)
    return next((part for piece, part in _PARTS if piece in line), "other")


def cpu_by_part(root: psutil.Process) -> dict[str, float]:
    """`cpu_seconds(root)` by the part of the graph each process is (part_of): what a process's exited
    children used (reaped by it) counts as its own."""
    parts: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                part = part_of(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        used = times.user + times.system + times.children_user + times.children_system
        parts[part] = parts.get(part, 0.0) + used
    return parts


def _process_groups(processes: list[psutil.Process]) -> set[int]:
    groups = set()
    for process in processes:
        try:
            groups.add(os.getpgid(process.pid))
        except ProcessLookupError:
            continue
    return groups


def _group_members(pgids: set[int]) -> list[psutil.Process]:
    """The processes of the process groups `pgids` still running."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in pgids and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


class Spawned:
    """A command started in a session of its own, its output in `log`, stopped with everything under it."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path, cwd: Path = REPO) -> None:
        # Open for the process's whole life, closed in stop().
        self._log = open(log, "w")  # noqa: SIM115
        self.log_path = log
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.tree = psutil.Process(self.process.pid)
        self.survivors: list[str] = []
        """Processes under it that outlived `stop()`'s grace and were killed."""

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM to the group, SIGKILL after `timeout_s`; then kill any descendant still running 10 s
        later, named in `survivors` (there should be none). Stopping a stopped process does nothing."""
        try:
            descendants = self.tree.children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        # Its own group and those it started (honcho starts each of the stack's services in a session).
        groups = {self.process.pid} | _process_groups(descendants)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        # A process whose parent died before the stop (a Triton stub whose server was killed) is no longer
        # under the tree, but still in its group.
        for process in alive + _group_members(groups):
            try:
                self.survivors.append(f"{process.name()} ({process.pid})")
                process.kill()
            except psutil.NoSuchProcess:
                continue
        self._log.close()
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class LocalStack(Spawned):
    """`python -m services.stack up` with the settings it was started with."""

    def __init__(self, settings: StackSettings, env: Mapping[str, str], log: Path) -> None:
        super().__init__([sys.executable, "-m", "services.stack", "up"], env, log)
        self.settings = settings
        self.env = dict(env)
        """What the stack was started with beyond this process's environment."""

    @property
    def gateway(self) -> str:
        return host_port(self.settings.host, self.settings.gateway_port)

    def address(self, name: str) -> str:
        """gRPC address of the stack's process `name` (e.g. `features-0`, `triton-0`)."""
        return next(p.health_address for p in processes(self.settings) if p.name == name)

    @property
    def gateway_metrics_url(self) -> str:
        [gateway] = [p for p in processes(self.settings) if p.name == "gateway"]
        port = int(gateway.env["SCOREGRAPH_GATEWAY_METRICS_PORT"])
        return f"http://{host_port(self.settings.host, port)}/metrics"

    def start_gateway(self, port: int, metrics_port: int, env: Mapping[str, str], log: Path) -> Spawned:
        """Another gateway on the stack's replicas, configured as the stack's own plus `env`, once it serves.

        Two gateway configurations then meet the very same replicas, faults included, for the cost of one
        stack's start-up."""
        [gateway] = [p for p in processes(self.settings) if p.name == "gateway"]
        ports = {"SCOREGRAPH_GATEWAY_PORT": str(port), "SCOREGRAPH_GATEWAY_METRICS_PORT": str(metrics_port)}
        second = dataclasses.replace(gateway, env={**self.env, **gateway.env, **ports, **env})
        spawned = Spawned(second.argv, process_env(second), log)
        address = host_port(self.settings.host, port)
        wait_until(lambda: serving(address), spawned, self.settings.ready_timeout_s, f"gateway at {address}")
        return spawned

    def process_of(self, name: str) -> psutil.Process:
        """The service process (not a respawning shell around it) of `name`, found by its listening port."""
        port = int(self.address(name).rpartition(":")[2])
        for child in self.tree.children(recursive=True):
            try:
                if any(
                    c.laddr.port == port and c.status == psutil.CONN_LISTEN
                    for c in child.net_connections("tcp")
                ):
                    return child
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no process listens on {name}'s port {port}")


def start_stack(
    log: Path, env: Mapping[str, str], ports: Mapping[str, int], *, service_logs: bool = False
) -> LocalStack:
    """`python -m services.stack up` on `ports` with extra environment, once every process serves.

    `service_logs`: each process writes its output to a file of its own in `service_log_dir(log)`, as in
    production, rather than through the supervisor into `log` (which tests read)."""
    extra = {**{f"SCOREGRAPH_STACK_{k}": str(v) for k, v in ports.items()}, **env}
    if service_logs:
        extra["SCOREGRAPH_STACK_LOG_DIR"] = str(service_log_dir(log))
    settings = StackSettings(
        **{
            k.removeprefix("SCOREGRAPH_STACK_").lower(): v
            for k, v in {**os.environ, **extra}.items()
            if k.startswith("SCOREGRAPH_STACK_")
        }
    )
    # Another stack serving on these ports would pass the health checks below while this one exits.
    refusal = ports_in_use(settings)
    if refusal:
        raise RuntimeError(f"cannot start a stack: {refusal}")
    stack = LocalStack(settings, extra, log)
    try:
        pending = wait_until_serving(
            [p.health_address for p in processes(settings)],
            settings.ready_timeout_s,
            stopped=lambda: stack.process.poll() is not None,
        )
    except BaseException:
        # Ctrl-C while it starts: the stack runs in a session of its own, which the interrupt never reached.
        stack.stop()
        raise
    if pending or stack.process.poll() is not None:
        stack.stop()
        where = f" (each process's own output: {service_log_dir(log)})" if service_logs else ""
        raise RuntimeError(f"stack not serving ({pending or 'exited'}){where}:\n{stack.log_tail()}")
    return stack


def service_log_dir(log: Path) -> Path:
    """Where a stack logging to `log` keeps its processes' own logs, when they have their own."""
    return log.with_suffix("")


@contextmanager
def running_stack(
    log: Path, env: Mapping[str, str], ports: Mapping[str, int], *, service_logs: bool = False
) -> Iterator[LocalStack]:
    stack = start_stack(log, env, ports, service_logs=service_logs)
    try:
        yield stack
    finally:
        stack.stop()


def local_get(url: str, timeout_s: float = 5) -> bytes:
    """GET on loopback, never through a proxy the environment sets for the package registries."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return response.read()


def http_ok(url: str) -> bool:
    try:
        local_get(url, timeout_s=1)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(ready: Callable[[], bool], process: Spawned, timeout_s: float, what: str) -> None:
    """Poll `ready` until it holds; fail early when `process` exits, with its log's end."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.process.returncode is not None else f"not ready in {timeout_s:.0f} s"
            process.stop()
            raise RuntimeError(f"{what} {state}:\n{process.log_tail()}")
        time.sleep(0.25)


def start_monolith(out: Path) -> Spawned:
    """The one-process contender (services.bench.monolith), once it serves."""
    monolith = Spawned(
        [sys.executable, "-m", "services.bench.monolith"],
        {"SCOREGRAPH_MONOLITH_PORT": str(MONOLITH_PORT)},
        out / "monolith.log",
    )
    address = f"127.0.0.1:{MONOLITH_PORT}"
    wait_until(lambda: serving(address), monolith, 120, "the monolith")
    return monolith


def start_bare_grpc(out: Path) -> Spawned:
    """The bare gRPC server (services.bench.bare_grpc), once it serves."""
    bare = Spawned([sys.executable, "-m", "services.bench.bare_grpc"], {}, out / "bare-grpc.log")
    wait_until(lambda: serving(f"127.0.0.1:{BARE_GRPC_PORT}"), bare, 60, "the bare gRPC server")
    return bare


async def start_together(*starts: Callable[[], Spawned]) -> list[Spawned]:
    """Run blocking `starts` at once: a start-up that is mostly one process importing modules leaves the
    other core idle. If one fails, those that started are stopped."""
    outcomes = await asyncio.gather(*(asyncio.to_thread(start) for start in starts), return_exceptions=True)
    started = [outcome for outcome in outcomes if isinstance(outcome, Spawned)]
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failed:
        for process in started:
            process.stop()
        raise failed[0]
    return started
