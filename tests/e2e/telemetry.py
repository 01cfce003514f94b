"""One stack exporting its traces to a test OTLP receiver, shared by the tracing and the no-PII tests.

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


_shared: dict[str, object] = {}


def shared_traced_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    """Body of a session fixture in each module that needs the stack: started once for all of them (it
    takes half a minute), stopped when the last one is done with it."""
    if "stack" not in _shared:
        collector = TraceCollector().start()
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "SCOREGRAPH_TRITON_OTLP_TRACES_URL": f"{collector.http_endpoint}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        stack = start_stack(tmp_path_factory.mktemp("traced") / "stack.log", env=env, **PORTS)
        _shared.update(stack=TracedStack(stack, collector), users=0)
    _shared["users"] += 1
    yield _shared["stack"]
    _shared["users"] -= 1
    if not _shared["users"]:
        traced = _shared.pop("stack")
        traced.stack.stop()
        traced.collector.stop()
