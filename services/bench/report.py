"""The benchmark's report: a markdown table and the plots people would rather look at than read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from services.bench.__main__ import Contender


def _ms(value: float) -> str:
    return f"{value:.2f}"


def table(contenders: list[Contender], slo_ms: float) -> str:
    rows = [
        "| contender | p50 ms (1 in flight) | p99 ms | p999 ms "
        f"| max sustained rate/s (p99 <= {slo_ms:.0f} ms) | CPU s per 1000 req (at that rate) |",
        "|---|---|---|---|---|---|",
    ]
    for c in contenders:
        f = c.floor
        sustained = [(r, cpu) for r, cpu in c.steps if r.offered_rate == c.max_sustained_rate]
        cpu = f"{sustained[0][1]:.2f}" if sustained else "-"
        rate = f"{c.max_sustained_rate:.0f}" if c.steps else "- (floor only)"
        rows.append(
            f"| {c.name} | {_ms(f.percentile_ms(50))} | {_ms(f.percentile_ms(99))} "
            f"| {_ms(f.percentile_ms(99.9))} | {rate} | {cpu} |"
        )
    return "\n".join(rows)


def load_table(contenders: list[Contender]) -> str:
    rows = [
        "| contender | offered/s | done/s | p50 ms | p99 ms | p999 ms | max ms | errors | CPU s/1000 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contenders:
        for run, cpu in c.steps:
            rows.append(
                f"| {c.name} | {run.offered_rate:.0f} | {run.achieved_rate:.0f} "
                f"| {_ms(run.percentile_ms(50))} | {_ms(run.percentile_ms(99))} "
                f"| {_ms(run.percentile_ms(99.9))} | {_ms(run.max_ms)} "
                f"| {run.errors} | {cpu:.2f} |"
            )
    return "\n".join(rows)


def plot_latency_vs_load(contenders: list[Contender], path: Path, slo_ms: float) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in contenders:
        if not c.steps:
            continue
        rates = [r.offered_rate for r, _ in c.steps]
        (line,) = ax.plot(rates, [r.percentile_ms(99) for r, _ in c.steps], marker="o", label=f"{c.name} p99")
        ax.plot(
            rates,
            [r.percentile_ms(50) for r, _ in c.steps],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{c.name} p50",
        )
    ax.axhline(slo_ms, color="grey", linewidth=0.8, linestyle=":", label=f"SLO p99 {slo_ms:.0f} ms")
    ax.set(
        xlabel="offered load (requests/s, open loop)",
        ylabel="latency (ms, from intended send time)",
        yscale="log",
        title="Gateway.Score latency vs offered load",
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, contenders: list[Contender], machine: dict) -> None:
    slo = machine["slo_p99_ms"]
    plot_latency_vs_load(contenders, out / "latency_vs_load.png", slo)
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    text = f"""# scoregraph benchmark

Machine: {machine["cores"]} cores, {machine["cpu"]}; Python {machine["python"]}; {versions};
tritonserver {machine["tritonserver"]}. The load generator runs on the same cores as the contenders.

## Summary
{table(contenders, slo)}

Latency "1 in flight" is one call at a time (the floor with nothing queued). Rates are open loop: latency
counts from each request's intended send time. CPU is the contender's whole process tree.

## Every step
{load_table(contenders)}

![latency vs load](latency_vs_load.png)
"""
    (out / "report.md").write_text(text)
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
