"""Runs the embedded stack under honcho: every process started, watched, and stopped together.

honcho starts each process in its own session and signals the whole process group, so tritonserver's Python
backend stubs go with it; if any process exits, or on SIGINT/SIGTERM, all the others are stopped (SIGTERM,
then SIGKILL after 5 s). A readiness thread polls grpc.health.v1 on every process and announces the gateway.
Unless an OTLP endpoint is configured, a local receiver collects every process's traces into a Jaeger JSON
file under data/traces/ (see collector.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from honcho.manager import Manager
from honcho.printer import Printer

from services.predict.tritonserver import remove_stale_shm
from services.runtime.settings import host_port, read_settings
from services.stack.collector import CollectorSettings, TraceCollector, TraceFileWriter, trace_file
from services.stack.topology import (
    StackProcess,
    StackSettings,
    busy_ports,
    process_env,
    processes,
    triton_grpc_ports,
)

_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def serving(address: str, timeout_s: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_serving(
    addresses: list[str], timeout_s: float, stopped: Callable[[], bool] = lambda: False
) -> list[str]:
    """Poll until every address reports SERVING, the timeout passes or `stopped()` says to give up; returns
    the addresses not serving."""
    pending = list(addresses)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline and not stopped():
        pending = [address for address in pending if not serving(address)]
        if pending:
            time.sleep(0.25)
    return pending


def _announce_when_ready(stack: list[StackProcess], settings: StackSettings, stop: threading.Event) -> None:
    started = time.monotonic()
    pending = wait_until_serving([p.health_address for p in stack], settings.ready_timeout_s, stop.is_set)
    if stop.is_set():
        return
    if pending:
        print(
            f"scoregraph: not serving after {settings.ready_timeout_s:.0f} s: {pending}; stopping", flush=True
        )
        os.kill(os.getpid(), signal.SIGTERM)
        return
    print(
        f"scoregraph is up ({len(stack)} processes, {time.monotonic() - started:.1f} s): "
        f"Gateway.Score at {host_port(settings.host, settings.gateway_port)}. Ctrl-C stops everything.",
        flush=True,
    )


def command_line(process: StackProcess, log_dir: Path | None) -> str:
    """The shell command the supervisor runs for `process`: its output appended to its own file in
    `log_dir`, when there is one, rather than read by the supervisor.

    The shell execs the process rather than wait for it: the supervisor must see the process itself, which
    outlives SIGTERM while it drains, so that one still running when the supervisor's wait is over gets
    SIGKILL. A shell in between died of the SIGTERM at once, and the supervisor took it for the process:
    a tritonserver that hung in its shutdown was then left running after the stack had stopped."""
    command = shlex.join(process.argv)
    if log_dir is None:
        return command
    return f"exec {command} >>{shlex.quote(str(log_dir / f'{process.name}.log'))} 2>&1"


def silence_terminal() -> None:
    """Point every descriptor of this process that is a terminal at /dev/null: once the terminal has hung
    up, writing to it fails, and a failing print must not stop a clean-up halfway. Every one, not only
    stdout and stderr: pytest, for one, writes its report to a copy of the terminal it keeps while capturing.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                # isatty no longer answers once the terminal has hung up; the descriptor's path still does.
                if os.readlink(f"/proc/self/fd/{fd}").startswith(("/dev/pts/", "/dev/tty")):
                    os.dup2(devnull, int(fd))
    finally:
        os.close(devnull)


def _hung_up(signum: int, frame: object) -> None:
    """SIGHUP, the terminal gone (closed, an SSH session dropped): stop the stack as on SIGTERM.

    Its processes run in sessions of their own, out of the terminal's reach: without this the supervisor
    died alone and left the whole stack running, holding its ports.
    """
    silence_terminal()
    os.kill(os.getpid(), signal.SIGTERM)


def interrupt_on_hangup_or_sigterm() -> None:
    """From now on SIGHUP and SIGTERM end this process as Ctrl-C does (KeyboardInterrupt; asyncio.run
    cancels its task), so it stops what it started on the way out.

    For the benchmark and the test suite: the stacks they start run in sessions of their own, out of the
    terminal's reach, and by default either signal ends the process at once, leaving them running."""

    def interrupt(signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            silence_terminal()
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def ports_in_use(settings: StackSettings) -> str | None:
    """Why the stack cannot start on its ports (something listens on one), or None when all are free."""
    busy = busy_ports(settings)
    if not busy:
        return None
    return (
        f"ports {busy} on {settings.host} are in use (another stack still running?); "
        "stop it or set SCOREGRAPH_STACK_*_PORT"
    )


def run(settings: StackSettings) -> int:
    missing = settings.model_repository / "fraud_mlp"
    if not missing.is_dir():
        print(f"scoregraph: no model at {missing}; run `make build` first", file=sys.stderr)
        return 2
    refusal = ports_in_use(settings)
    if refusal:
        print(f"scoregraph: {refusal}", file=sys.stderr)
        return 2
    stack = processes(settings)
    traces = read_settings(CollectorSettings)
    collector: TraceCollector | None = None
    writer: TraceFileWriter | None = None
    telemetry: dict[str, str] = {}
    if traces.collect and not any(os.environ.get(name) for name in _OTLP_ENDPOINTS):
        collector = TraceCollector(
            grpc_port=traces.grpc_port, http_port=traces.http_port, max_traces=traces.max_traces
        ).start()
        writer = TraceFileWriter(collector, trace_file(traces.dir)).start()
        # HTTP, which tritonserver exports too.
        telemetry = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
        print(
            f"scoregraph: traces go to {writer.path} (OTLP receiver: gRPC {collector.grpc_endpoint}, "
            f"HTTP {collector.http_endpoint})",
            flush=True,
        )
    # honcho starts each process from a multiprocessing child, forked by default; this process already runs
    # gRPC (the readiness probe, the trace receiver), and gRPC does not survive fork(): a child forked while
    # another thread is inside gRPC can abort. A fork server is a fresh process with no gRPC in it.
    multiprocessing.set_start_method("forkserver", force=True)
    manager = Manager(Printer(sys.stdout))
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        print(f"scoregraph: each process's output goes to {settings.log_dir}/<name>.log", flush=True)
    for process in stack:
        manager.add_process(
            process.name, command_line(process, settings.log_dir), env={**process_env(process), **telemetry}
        )
    stop = threading.Event()
    threading.Thread(target=_announce_when_ready, args=(stack, settings, stop), daemon=True).start()
    signal.signal(signal.SIGHUP, _hung_up)
    try:
        manager.loop()
    finally:
        stop.set()
        # A tritonserver killed rather than stopped (one hung in its shutdown gets SIGKILL after 5 s) skips
        # its clean-up and leaves its Python-backend shared memory in /dev/shm; every server is gone now.
        for port in triton_grpc_ports(settings):
            remove_stale_shm(port)
        if writer is not None:
            writer.stop()
        if collector is not None:
            collector.stop()
    return manager.returncode or 0
