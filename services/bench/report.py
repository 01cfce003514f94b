"""The benchmark's report: results/bench-<time>/report.md with its plots, and machine.json."""

from __future__ import annotations

import json
from pathlib import Path

from services.bench.plots import plot_hedging_cdf, plot_latency_vs_load
from services.bench.results import SLO_P99_MS, BenchResults
from services.bench.tables import (
    half_load_summary,
    hedging_table,
    steps_table,
    summary_table,
    targets_table,
    tracing_table,
)


def restarts(out: Path) -> str:
    """The replicas the stacks restarted during the run (a crash or a kill), from their logs: figures that
    include one include a replica's outage and the calls routed around it."""
    found = [
        f"{log.relative_to(out)}: {line.split('|', 1)[-1].strip()}"
        for log in sorted(out.rglob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "respawning " in line
    ]
    if not found:
        return "Replica restarts during the run: none."
    return "Replica restarts during the run (the figures include them):\n\n" + "\n".join(
        f"- {line}" for line in found
    )


def timeline(phases: list[tuple[str, str]]) -> str:
    """When each phase of the run started, to place a replica restart (its respawn line says when) in one."""
    if not phases:
        return "Not recorded."
    return "\n".join(f"- {started} {phase}" for started, phase in phases)


def write_report(out: Path, results: BenchResults, machine: dict) -> None:
    plot_latency_vs_load(results.contenders, out / "latency_vs_load.png")
    plots = "![latency vs load](latency_vs_load.png)"
    if results.hedging:
        plot_hedging_cdf(results, out / "hedging_cdf.png")
        plots += "\n\n![latency CDF with and without hedging](hedging_cdf.png)"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    text = f"""# scoregraph benchmark

Machine: {machine["cores"]} cores, {machine["cpu"]}; Python {machine["python"]}; {versions};
tritonserver {machine["tritonserver"]}. The load generator runs on the same cores as the contenders.
Run: {machine["mode"]}, {machine["duration_s"]:.0f} s.

{restarts(out)}

## Summary
{summary_table(results.contenders)}

Latency "1 in flight" is one call at a time (the floor with nothing queued). Rates are open loop: latency
counts from each request's intended send time, and a rate is sustained when p99 <= {SLO_P99_MS:.0f} ms with no
error. The rates offered close in on each contender's saturation (`>=`: it sustained the highest rate
offered). CPU is the server's whole process tree: the stack's every process for the graph, the one features
replica called for the features service, gunicorn and its worker for `feast serve`. The graph (and the
features replica on its stack) runs as in production, every call traced and exported over OTLP to a
receiver in a process of its own (whose CPU is not counted here; see the tracing section); the monolith
has no tracing. `feast serve` runs one worker (as one features replica is one process), recycling off.

{half_load_summary(results)}

## Targets (issue #6)
{targets_table(results)}

## Hedging with one slow replica
Gateway.Score at a fixed open-loop rate, after a warm-up: healthy on the graph's stack, and on a stack whose
`features-1` delays 5 % of its calls by 50 ms, up beside it, through a gateway that does not hedge the
features hop and through the stack's own, which does. The three gateways are driven in turns of a few seconds
(the order rotating), so that all three see the same machine. Extra features requests are the requests beyond
one per call (hedges and retries), from each gateway's own counters.

{hedging_table(results)}

## Tracing at 100 % sampling
Gateway.Score at saturation (closed loop, {machine["saturation_concurrency"]} calls in flight) on the graph's
stack, every call traced in every process (Triton included) and exported over OTLP/HTTP to a receiver in a
process of its own on the same cores; on the same stack sampling nothing (each call's `traceparent` says "not
sampled", so no service records a span, Triton included); and on a stack with tracing off up beside it, its
calls with and without that `traceparent` (which OpenTelemetry passes on to every hop with tracing off: what a
traced caller costs a stack that does not trace). The four are driven in turns of a few seconds, each followed
by a pause in which the traced stack exports what is left (its span processors' schedule delay is
{machine["bsp_schedule_delay_ms"]} ms, OpenTelemetry's default: they export every 512 spans or when that long
has passed). Two targets: against the same stack sampling nothing, sampling's own cost (two stacks, both with
tracing off, differed by 3-9 % in the same kind of run on a busy machine, more than the 10 % judged); and
against the stack with tracing off, what a user turning tracing on sees, the cost of tracing being on for
calls it does not sample (a `traceparent` on every hop, spans made if not recorded) included.

{tracing_table(results)}

## Every step
{steps_table(results.contenders)}

## Timeline (UTC)
{timeline(machine.get("phases", []))}

{plots}
"""
    (out / "report.md").write_text(text)
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
