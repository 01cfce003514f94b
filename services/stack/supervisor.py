"""Runs the embedded stack under honcho: every process started, watched, and stopped together.

honcho starts each process in its own session and signals the whole process group, so tritonserver's Python
backend stubs go with it; if any process exits, or on SIGINT/SIGTERM, all the others are stopped (SIGTERM,
then SIGKILL after 5 s). A readiness thread polls grpc.health.v1 on every process and announces the gateway.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from honcho.manager import Manager
from honcho.printer import Printer

from services.stack.topology import StackProcess, StackSettings, process_env, processes


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
    addresses: list[str], timeout_s: float, stop: threading.Event | None = None
) -> list[str]:
    """Poll until every address reports SERVING; returns those that did not within the timeout."""
    pending = list(addresses)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline and not (stop and stop.is_set()):
        pending = [address for address in pending if not serving(address)]
        if pending:
            time.sleep(0.25)
    return pending


def _announce_when_ready(stack: list[StackProcess], settings: StackSettings, stop: threading.Event) -> None:
    started = time.monotonic()
    pending = wait_until_serving([p.health_address for p in stack], settings.ready_timeout_s, stop)
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
        f"Gateway.Score at {settings.host}:{settings.gateway_port}. Ctrl-C stops everything.",
        flush=True,
    )


def run(settings: StackSettings) -> int:
    missing = settings.model_repository / "fraud_mlp"
    if not missing.is_dir():
        print(f"scoregraph: no model at {missing}; run `make build` first", file=sys.stderr)
        return 2
    stack = processes(settings)
    manager = Manager(Printer(sys.stdout))
    for process in stack:
        manager.add_process(process.name, shlex.join(process.argv), env=process_env(process))
    stop = threading.Event()
    threading.Thread(target=_announce_when_ready, args=(stack, settings, stop), daemon=True).start()
    try:
        manager.loop()
    finally:
        stop.set()
    return manager.returncode or 0
