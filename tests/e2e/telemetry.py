"""A stack exporting its traces to a test OTLP receiver, for the tracing and the no-PII tests.

The Python services export over OTLP/gRPC and tritonserver over OTLP/HTTP, so both receivers are used.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.stack.collector import TraceCollector
from services.stack.topology import processes
from tests.e2e.conftest import RunningStack, start_stack

PORTS = {
    "GATEWAY_PORT": 56051,
    "FEATURES_PORT": 56061,
    "POSTPROCESS_PORT": 56071,
    "TRITON_PORT": 56001,
    "METRICS_PORT": 56464,
}
SCORE_SPAN = "scoregraph.gateway.v1.GatewayService/Score"
SERVICES = {"scoregraph-gateway", "scoregraph-features", "scoregraph-triton", "scoregraph-postprocess"}


@dataclass
class TracedStack:
    stack: RunningStack
    collector: TraceCollector

    def metrics(self) -> dict[str, str]:
        """Each service's Prometheus page, by process name."""
        pages = {}
        for process in processes(self.stack.settings):
            port = next((v for k, v in process.env.items() if k.endswith("_METRICS_PORT")), None)
            if port:
                with urllib.request.urlopen(f"http://{self.stack.settings.host}:{port}/metrics") as reply:
                    pages[process.name] = reply.read().decode()
        return pages

    def wait_for_traces(self, trace_ids: list[str], timeout_s: float = 15) -> bool:
        def whole(collector: TraceCollector) -> bool:
            # The gateway's server span ends last: once it is in, the gateway has sent all of its spans.
            return all(
                {s.service for s in collector.trace(t)} >= SERVICES
                and any(s.name == SCORE_SPAN for s in collector.trace(t))
                for t in trace_ids
            )

        return self.collector.wait_for(whole, timeout_s)


def traced_stack_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    """Body of a module fixture: a stack exporting to a collector of the test's own, started right before
    the module's tests and stopped after them (a collector kept through other modules' load tests was seen
    to miss spans)."""
    collector = TraceCollector().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "SCOREGRAPH_TRITON_OTLP_TRACES_URL": f"{collector.http_endpoint}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    try:
        stack = start_stack(tmp_path_factory.mktemp("traced") / "stack.log", env=env, **PORTS)
        try:
            yield TracedStack(stack, collector)
        finally:
            stack.stop()
    finally:
        collector.stop()
