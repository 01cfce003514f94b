"""The plots people would rather look at than read: latency against offered load, and hedging's CDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from services.bench.loadgen import RunResult
from services.bench.results import SLO_P99_MS, BenchResults, Contender

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402


def _plain_numbers(*axes) -> None:
    """Log axes ticked 1, 2, 5, 10, 20... and labelled so, rather than 10^1."""
    for axis in axes:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())


def plot_latency_vs_load(contenders: list[Contender], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 7))
    for c in contenders:
        if not c.steps:
            continue
        rates = [s.run.offered_rate for s in c.steps]
        (line,) = ax.plot(
            rates, [s.run.percentile_ms(99) for s in c.steps], marker="o", label=f"{c.name} p99"
        )
        ax.plot(
            rates,
            [s.run.percentile_ms(50) for s in c.steps],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{c.name} p50",
        )
    ax.axhline(SLO_P99_MS, color="grey", linewidth=0.8, linestyle=":", label=f"SLO p99 {SLO_P99_MS:.0f} ms")
    ax.set(
        xlabel="offered load (requests/s, open loop)",
        ylabel="latency (ms, from intended send time)",
        xscale="log",
        yscale="log",
        title="Latency vs offered load",
    )
    _plain_numbers(ax.xaxis, ax.yaxis)
    # Below the plot: six contenders' lines leave no corner free.
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cdf_points(run: RunResult) -> tuple[list[float], list[float]]:
    """(latency in ms, share of calls at most that slow) at every value the histogram recorded."""
    total = run.histogram.get_total_count()
    points = [
        (item.value_iterated_to / 1000, item.total_count_to_this_value / total)
        for item in run.histogram.get_recorded_iterator()
    ]
    return [ms for ms, _ in points], [share for _, share in points]


def plot_hedging_cdf(results: BenchResults, path: Path) -> None:
    """The latency CDF of each hedging run, and beside it the tail: the share of calls slower than each
    latency on a log scale, where p99 and p999 are as far apart as p50 and p90 (a slow replica's 2.5 % of
    calls sits there, invisible on the linear CDF)."""
    fig, (cdf, tail) = plt.subplots(1, 2, figsize=(12, 5))
    for h in results.hedging.values():
        if h.run.ok:
            latencies, shares = cdf_points(h.run)
            # From 0 at the fastest call, so the curve rises rather than starting mid-air.
            cdf.step([latencies[0], *latencies], [0.0, *shares], where="post", label=h.name)
            # Slower than each latency, held out to the slowest call; its own share (0) has no place on a
            # log scale.
            above = [1.0 - share for share in shares]
            kept = [(x, y) for x, y in zip(latencies, above, strict=True) if y > 0]
            if kept:
                xs, ys = zip(*kept, strict=True)
                tail.step([latencies[0], *xs, latencies[-1]], [1.0, *ys, ys[-1]], where="post", label=h.name)
    for share in (0.5, 0.99):
        cdf.axhline(share, color="grey", linewidth=0.6, linestyle=":")
    for share, name in ((0.01, "p99"), (0.001, "p999")):
        tail.axhline(share, color="grey", linewidth=0.6, linestyle=":")
        tail.annotate(
            name, (1, share), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8
        )
    latency_axis = "Gateway.Score latency (ms, log scale, from intended send time)"
    cdf.set(
        xlabel=latency_axis,
        ylabel="share of calls at most this slow",
        xscale="log",
        ylim=(0, 1.01),
        title="Latency CDF, one features replica slow",
    )
    tail.set(
        xlabel=latency_axis,
        ylabel="share of calls slower (log scale)",
        xscale="log",
        yscale="log",
        title="The tail: with and without hedging",
    )
    for ax in (cdf, tail):
        _plain_numbers(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=8, loc="lower right")
    tail.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
