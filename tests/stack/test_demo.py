"""make demo's trace file: written once every scored call's trace is whole."""

import io
import json
import threading

from rich.console import Console

from services.predict.tritonserver import TRITON_SERVICE_NAME
from services.stack import demo
from services.stack.collector import TraceCollector
from services.stack.demo import Scored, show_trace
from tests.stack.test_collector import export

SERVICES = ["scoregraph-gateway", "scoregraph-features", TRITON_SERVICE_NAME, "scoregraph-postprocess"]


def scored(trace: int, verdict: str) -> Scored:
    return Scored(
        f"tx-{trace}", "1.00 USD", "ONLINE", "legit", verdict, 0.5, [], False, 1.0, trace_id=f"{trace:032x}"
    )


def services_by_trace(path) -> dict[str, set[str]]:
    document = json.loads(path.read_text())
    return {
        trace["traceID"]: {trace["processes"][span["processID"]]["serviceName"] for span in trace["spans"]}
        for trace in document["data"]
    }


def shown(collector: TraceCollector, path) -> str:
    """What the demo prints of two scored calls' traces (the first flagged), writing their file to `path`."""
    out = io.StringIO()
    show_trace(
        Console(file=out, width=200), collector, [scored(1, "SUSPICIOUS"), scored(2, "NOT_FRAUD")], path
    )
    return out.getvalue()


def test_the_trace_file_waits_for_the_last_calls_spans(tmp_path):
    collector = TraceCollector()
    for number, service in enumerate(SERVICES, start=1):
        collector.receive(export(service, (1, number, 0)))
    collector.receive(export(SERVICES[0], (2, 10, 0)))
    # The flagged call's trace is whole at once; the last call's other services export a moment later.
    late = threading.Timer(
        0.3, lambda: [collector.receive(export(s, (2, 10 + n, 10))) for n, s in enumerate(SERVICES[1:], 1)]
    )
    late.start()
    try:
        printed = shown(collector, tmp_path / "t.json")
    finally:
        late.cancel()

    assert services_by_trace(tmp_path / "t.json") == {f"{1:032x}": set(SERVICES), f"{2:032x}": set(SERVICES)}
    assert "2 traces written" in printed
    assert "lack" not in printed
    assert "no spans of Triton's" not in printed


def test_a_trace_still_missing_spans_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "WHOLE_TRACES_WAIT_S", 0.2)
    collector = TraceCollector()
    for number, service in enumerate(SERVICES, start=1):
        collector.receive(export(service, (1, number, 0)))
    collector.receive(export(SERVICES[0], (2, 10, 0)))
    printed = shown(collector, tmp_path / "t.json")

    assert services_by_trace(tmp_path / "t.json")[f"{2:032x}"] == {SERVICES[0]}
    assert "1 of the 2 traces lack a Python service's spans" in printed


def test_a_trace_triton_did_not_continue_is_said_as_such(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TRITON_LAST_BATCH_S", 0.2)
    collector = TraceCollector()
    for trace in (1, 2):
        for number, service in enumerate(SERVICES, start=1):
            if not (trace == 2 and service == TRITON_SERVICE_NAME):
                collector.receive(export(service, (trace, 10 * trace + number, 0)))
    printed = shown(collector, tmp_path / "t.json")

    assert "1 of the 2 traces have no spans of Triton's" in printed
    assert "lack" not in printed
