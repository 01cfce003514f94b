"""make demo: start the stack, score live transactions through Gateway.Score, show what came back, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.predict.tritonserver import TRITON_SERVICE_NAME
from services.runtime.settings import host_port, read_settings
from services.stack.collector import CollectorSettings, TraceCollector, trace_file, waterfall
from services.stack.supervisor import ports_in_use, wait_until_serving
from services.stack.topology import REPO, StackSettings, processes
from services.stack.traffic import fraud_enriched_sample, load_live, score_request

SAMPLE_SIZE = 300
FRAUD_SHARE = 0.2
DEADLINE_S = 2.0
FLAGGED = {"SUSPICIOUS", "HIGHLY_SUSPICIOUS"}
# A trace is whole when every service has sent its spans: gateway, features, postprocess, and Triton.
PYTHON_SERVICES = 3
#: How long the demo waits for the Python services' last spans (they export every 0.5 s here), and then
#: for Triton's last batch (on the same schedule).
WHOLE_TRACES_WAIT_S = 5.0
TRITON_LAST_BATCH_S = 1.5


@dataclass(frozen=True)
class Scored:
    transaction_id: str
    amount: str
    channel: str
    truth: str
    verdict: str
    score: float | None
    reasons: list[str]
    degraded: bool
    latency_ms: float
    error: str = ""
    trace_id: str = ""


def verdict_name(verdict: int) -> str:
    return gateway_pb2.Verdict.Name(verdict).removeprefix("VERDICT_")


def score_all(address: str, sample) -> list[Scored]:
    results = []
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for row in sample.itertuples(index=False):
            request = score_request(row)
            amount = f"{row.amount_minor / 100:,.2f} {row.currency_code}"
            truth = row.fraud_pattern if row.is_fraud else "legit"
            started = time.perf_counter()
            try:
                reply = stub.Score(request, timeout=DEADLINE_S)
            except grpc.RpcError as error:
                latency = (time.perf_counter() - started) * 1e3
                results.append(
                    Scored(
                        row.transaction_id,
                        amount,
                        row.channel,
                        truth,
                        "ERROR",
                        None,
                        [],
                        False,
                        latency,
                        error.code().name,
                    )
                )
                continue
            latency = (time.perf_counter() - started) * 1e3
            results.append(
                Scored(
                    row.transaction_id,
                    amount,
                    row.channel,
                    truth,
                    verdict_name(reply.verdict),
                    reply.score if reply.HasField("score") else None,
                    [reason.code for reason in reply.reasons],
                    reply.degraded,
                    latency,
                    trace_id=reply.trace_id,
                )
            )
    return results


def show(console: Console, results: list[Scored]) -> None:
    table = Table(title="A sample of the scored live transactions", title_justify="left")
    for column in ("transaction", "amount", "channel", "ground truth", "verdict", "score", "reasons", "ms"):
        table.add_column(column, justify="right" if column in ("amount", "score", "ms") else "left")
    fraud = [r for r in results if r.truth != "legit"]
    legit = [r for r in results if r.truth == "legit"]
    colour = {
        "NOT_FRAUD": "green",
        "SUSPICIOUS": "yellow",
        "HIGHLY_SUSPICIOUS": "red",
        "UNCERTAIN": "magenta",
    }
    for r in fraud[:6] + legit[:8]:
        table.add_row(
            r.transaction_id,
            r.amount,
            r.channel,
            r.truth,
            f"[{colour.get(r.verdict, 'bold red')}]{r.verdict}[/]",
            "-" if r.score is None else f"{r.score:.3f}",
            ", ".join(r.reasons[:2]) or r.error,
            f"{r.latency_ms:.1f}",
        )
    console.print(table)

    counts = Counter(r.verdict for r in results)
    latency = np.array([r.latency_ms for r in results])
    caught = sum(r.verdict in FLAGGED for r in fraud)
    cleared = sum(r.verdict == "NOT_FRAUD" for r in legit)
    false_alarms = sum(r.verdict in FLAGGED for r in legit)
    console.print(
        f"\n[bold]Summary[/] of {len(results)} live transactions ({len(fraud)} fraudulent by the "
        f"generator's ground truth; the sample is enriched with fraud so there is some to see):"
    )
    console.print("  verdicts:      " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(
        f"  fraud:         {caught}/{len(fraud)} flagged SUSPICIOUS or HIGHLY_SUSPICIOUS "
        f"({caught / max(len(fraud), 1):.0%})"
    )
    console.print(
        f"  legitimate:    {cleared}/{len(legit)} NOT_FRAUD ({cleared / max(len(legit), 1):.0%}), "
        f"{false_alarms} flagged"
    )
    console.print(
        f"  degraded:      {sum(r.degraded for r in results)}; "
        f"errors: {sum(r.verdict == 'ERROR' for r in results)}"
    )
    console.print(
        f"  latency (one call at a time, client side): p50 {np.percentile(latency, 50):.2f} ms, "
        f"p99 {np.percentile(latency, 99):.2f} ms, max {latency.max():.2f} ms"
    )


def show_trace(console: Console, collector: TraceCollector, results: list[Scored], path: Path) -> None:
    """One Score call's trace as a waterfall (a flagged one if any), and the file with all of them, written
    once every call's trace holds the Python services' spans and Triton's exporter has had time for its last
    batch, saying how many traces lack a service's spans."""
    traced = [r for r in results if r.trace_id]
    if not traced:
        return
    chosen = next((r for r in traced if r.verdict in FLAGGED), traced[0])

    def services(c: TraceCollector, trace_id: str) -> set[str]:
        return {span.service for span in c.trace(trace_id)}

    def python_side(c: TraceCollector, trace_id: str) -> bool:
        return len(services(c, trace_id) - {TRITON_SERVICE_NAME}) >= PYTHON_SERVICES

    def whole(c: TraceCollector, trace_id: str) -> bool:
        return python_side(c, trace_id) and TRITON_SERVICE_NAME in services(c, trace_id)

    if collector.wait_for(lambda c: all(python_side(c, r.trace_id) for r in traced), WHOLE_TRACES_WAIT_S):
        collector.wait_for(lambda c: all(whole(c, r.trace_id) for r in traced), TRITON_LAST_BATCH_S)
    spans = collector.trace(chosen.trace_id)
    if spans:
        console.print(f"\nThe trace of {chosen.transaction_id} ({chosen.verdict}), every hop in it:")
        console.print(waterfall(spans))
    collector.write_jaeger(path)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    console.print(
        f"{len(collector.trace_ids())} traces written to {shown}: open it in Jaeger UI "
        "(Search, JSON File), or run deploy/'s compose file to send traces to Jaeger directly."
    )
    without_triton = sum(TRITON_SERVICE_NAME not in services(collector, r.trace_id) for r in traced)
    partial = sum(not python_side(collector, r.trace_id) for r in traced)
    if without_triton:
        console.print(
            f"{without_triton} of the {len(traced)} traces have no spans of Triton's: tritonserver 2.51's "
            "gRPC endpoint loses the traceparent of 2-6 calls in 100, and traces nothing of such a call."
        )
    if partial:
        console.print(
            f"[yellow]{partial} of the {len(traced)} traces lack a Python service's spans "
            f"{WHOLE_TRACES_WAIT_S:.0f} s after the last call (see data/demo-stack.log).[/]"
        )


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> int:
    # Under make, stdout is often no terminal and rich would wrap the table at 80 columns.
    console = Console(width=max(Console().width, 150))
    settings = read_settings(StackSettings)
    log_path = REPO / "data" / "demo-stack.log"
    # Checked here as well as by the stack: another stack on these ports would answer the demo's health
    # checks and calls while this one exits, and the demo would show that stack's results as its own.
    refusal = ports_in_use(settings)
    if refusal:
        console.print(f"[red]Cannot start the stack: {refusal}.[/]")
        return 2
    console.print(f"Starting the stack (logs in {log_path.relative_to(REPO)}) ...")
    collector = TraceCollector(max_traces=SAMPLE_SIZE + 10).start()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        # Spans leave within half a second, so the waterfall needs no long wait.
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    with open(log_path, "w") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "up"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            pending = wait_until_serving(
                [p.health_address for p in processes(settings)],
                settings.ready_timeout_s,
                stopped=lambda: stack.poll() is not None,
            )
            if pending or stack.poll() is not None:
                console.print(f"[red]The stack did not come up ({pending or 'exited'}); from {log_path}:[/]")
                console.print(log_tail(log_path), markup=False, highlight=False)
                return 1
            address = host_port(settings.host, settings.gateway_port)
            live = load_live()
            if moved := live.attrs["days_moved"]:
                console.print(
                    f"[yellow]The live stream in data/ is older than the gateway takes, so it was moved "
                    f"{moved} day(s) forward: the stored features look that much older, and those past their "
                    "view's ttl read as stale (verdicts degraded, FEATURES_STALE). "
                    "`make clean && make demo` generates today's data.[/]"
                )
            sample = fraud_enriched_sample(live, SAMPLE_SIZE, FRAUD_SHARE)
            console.print(f"Scoring {len(sample)} live transactions through Gateway.Score at {address} ...")
            results = score_all(address, sample)
            if stack.poll() is not None:
                console.print(
                    f"[red]The stack exited (exit status {stack.returncode}) while the demo scored, so the "
                    f"answers are not all its own. From {log_path}:[/]"
                )
                console.print(log_tail(log_path), markup=False, highlight=False)
                return 1
            show(console, results)
            show_trace(console, collector, results, trace_file(read_settings(CollectorSettings).dir))
        finally:
            stack.send_signal(signal.SIGTERM)
            stack.wait(timeout=30)
            collector.stop()
    console.print("Stack stopped.")
    return 0
