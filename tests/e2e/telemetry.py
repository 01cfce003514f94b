"""A stack exporting its traces to a test OTLP receiver, for the tracing and the no-PII tests.

The Python services export over OTLP/gRPC and tritonserver over OTLP/HTTP, so both receivers are used.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.bench.processes import LocalStack, stack_ports
from services.stack.collector import TraceCollector
from services.stack.topology import processes
from tests.e2e.conftest import start_stack

SCORE_SPAN = "scoregraph.gateway.v1.GatewayService/Score"
TRITON_SERVICE = "scoregraph-triton"
PYTHON_SERVICES = {"scoregraph-gateway", "scoregraph-features", "scoregraph-postprocess"}
#: tritonserver 2.51 (nvidia-pytriton 0.7.0) loses the traceparent of 2-6 gRPC calls in 100 (tritonclient
#: calling it directly too, so not the gateway's doing; its HTTP endpoint loses none): its gRPC frontend
#: takes the value's length with strlen, and gRPC does not end the value with a NUL. Tracing only requests
#: that come with a context, it traces nothing of that call. It loses fewer while its heap is fresh, as in
#: a test's first calls. Of the traced calls a test makes, this many may lack Triton's spans.
UNCONTINUED_BY_TRITON = 2


@dataclass
class TracedStack:
    stack: LocalStack
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
        """Wait until every trace has the Python services' spans and all but `UNCONTINUED_BY_TRITON` of
        them Triton's too; then give the last of Triton's a moment more."""

        def python_side(collector: TraceCollector) -> bool:
            # The gateway's server span ends last: once it is in, the gateway has sent all of its spans.
            return all(
                {s.service for s in collector.trace(t)} >= PYTHON_SERVICES
                and any(s.name == SCORE_SPAN for s in collector.trace(t))
                for t in trace_ids
            )

        def with_triton(collector: TraceCollector) -> bool:
            return python_side(collector) and len(self.traced_by_triton(trace_ids)) >= len(trace_ids)

        if self.collector.wait_for(with_triton, timeout_s / 2):
            return True
        return (
            self.collector.wait_for(python_side, timeout_s / 2)
            and len(self.traced_by_triton(trace_ids)) >= len(trace_ids) - UNCONTINUED_BY_TRITON
        )

    def traced_by_triton(self, trace_ids: list[str]) -> list[str]:
        return [t for t in trace_ids if any(s.service == TRITON_SERVICE for s in self.collector.trace(t))]

    def describe(self, trace_ids: list[str]) -> str:
        """What arrived of each trace, and the stack log's warnings and errors: a failed wait's message."""
        lines = []
        for trace_id in trace_ids:
            spans = self.collector.trace(trace_id)
            services = sorted({s.service for s in spans})
            score = any(s.name == SCORE_SPAN for s in spans)
            lines.append(f"{trace_id}: {len(spans)} spans from {services}, Score span {score}")
        others = [t for t in self.collector.trace_ids() if t not in trace_ids]
        lines.append(f"{len(others)} other traces:")
        for trace_id in others:
            spans = [f"{s.service} {s.name}" for s in self.collector.trace(trace_id)]
            lines.append(f"{trace_id}: {spans}")
        log = self.stack.log_path.read_text(errors="replace").splitlines()
        words = ("error", "warn", "fail", "exception")
        noteworthy = [line for line in log if any(w in line.lower() for w in words)]
        lines.extend(noteworthy[-30:])
        return "\n".join(lines)


def traced_stack_for(tmp_path_factory: pytest.TempPathFactory, base_port: int) -> Iterator[TracedStack]:
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
        log = tmp_path_factory.mktemp("traced") / "stack.log"
        stack = start_stack(log, env=env, **stack_ports(base_port))
        try:
            yield TracedStack(stack, collector)
        finally:
            stack.stop()
    finally:
        collector.stop()
