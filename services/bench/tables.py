"""The benchmark's figures as markdown tables, for the report and for the commands that print a part of it."""

from __future__ import annotations

from services.bench.results import SLO_P99_MS, BenchResults, Contender, TracingRun
from services.bench.targets import evaluate


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _rate(contender: Contender) -> str:
    if not contender.steps:
        return "- (floor only)"
    # Never pushed past its sustained rates: what it can do is at least this.
    bound = "" if contender.saturated else ">= "
    return f"{bound}{contender.max_sustained_rate:.0f}"


def summary_table(contenders: list[Contender]) -> str:
    rows = [
        "| contender | p50 ms (1 in flight) | p99 ms | p999 ms "
        f"| max sustained rate/s (p99 <= {SLO_P99_MS:.0f} ms) | CPU s per 1000 req (at that rate) |",
        "|---|---|---|---|---|---|",
    ]
    for c in contenders:
        f = c.floor
        cpu = c.cpu_at_max_rate
        latency = " | ".join(_ms(f.percentile_ms(p)) for p in (50, 99, 99.9)) if f else "- | - | -"
        rows.append(f"| {c.name} | {latency} | {_rate(c)} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    return "\n".join(rows)


def steps_table(contenders: list[Contender]) -> str:
    rows = [
        "| contender | offered/s | done/s | p50 ms | p99 ms | p999 ms | max ms | errors | CPU s/1000 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contenders:
        for step in c.steps:
            run = step.run
            rows.append(
                f"| {c.name} | {run.offered_rate:.0f} | {run.achieved_rate:.0f} "
                f"| {_ms(run.percentile_ms(50))} | {_ms(run.percentile_ms(99))} "
                f"| {_ms(run.percentile_ms(99.9))} | {_ms(run.max_ms)} "
                f"| {run.errors + run.dropped} | {step.cpu_per_1000:.2f} |"
            )
    return "\n".join(rows)


def hedging_table(results: BenchResults) -> str:
    rows = [
        "| run | offered/s | calls | p50 ms | p99 ms | p999 ms | extra features requests "
        "| hedges sent | hedges won | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in results.hedging.values():
        run = h.run
        rows.append(
            f"| {h.name} | {run.offered_rate:.0f} | {run.ok} | {_ms(run.percentile_ms(50))} "
            f"| {_ms(run.percentile_ms(99))} | {_ms(run.percentile_ms(99.9))} | {h.extra_ratio:.1%} "
            f"| {h.hedges_sent:.0f} | {h.hedges_won:.0f} | {run.errors + run.dropped} |"
        )
    return "\n".join(rows)


def tracing_table(results: BenchResults) -> str:
    rows = [
        "| tracing | calls/s at saturation | p50 ms | p99 ms | CPU s/1000 calls | receiver CPU s/1000 calls "
        "| spans received |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in results.tracing.values():
        receiver = "-" if t.receiver_cpu_per_1000 is None else f"{t.receiver_cpu_per_1000:.2f}"
        cpu = "-" if t.cpu_per_1000 is None else f"{t.cpu_per_1000:.2f}"
        spans = ", ".join(f"{service} {n}" for service, n in sorted(t.spans_by_service.items())) or "-"
        rows.append(
            f"| {t.name} | {t.rate:.0f} | {_ms(t.run.percentile_ms(50))} | {_ms(t.run.percentile_ms(99))} "
            f"| {cpu} | {receiver} | {spans} |"
        )
    on = results.tracing.get("on")
    for key, baseline in (
        ("unsampled", "the same stack sampling nothing"),
        ("off", "a stack with tracing off"),
    ):
        base = results.tracing.get(key)
        if on is None or base is None or not base.rate:
            continue
        rows.append(f"\nSampled every call / {baseline}: **{on.ratio(base):.2f}** at saturation")
        turns = on.turn_ratios(base)
        if turns:
            rows[-1] += (
                f", the median of {len(turns)} rounds (each sampled turn beside its round's: "
                f"{min(turns):.2f} to {max(turns):.2f}); all turns together {on.rate / base.rate:.2f}"
            )
        if (cpu := on.cpu_change(base)) is not None:
            rows[-1] += f"; CPU per call {cpu:+.1%}"
        rows[-1] += "."
        if key == "unsampled" and (by_process := _by_process(on, base)):
            rows.append(by_process)
        if key == "off" and (steps := _steps_from_off(results)):
            rows.append(steps)
        if key == "off" and (by_process := _by_process_against_off(results)):
            rows.append(by_process)
    rows.extend(_steady_tracing_lines(results))
    return "\n".join(rows)


def _steady_tracing_lines(results: BenchResults) -> list[str]:
    on, base = results.tracing_steady.get("on"), results.tracing_steady.get("unsampled")
    if on is None or base is None or not base.run.ok:
        return []
    rate = base.run.offered_rate
    p50, p99 = (f"{_ms(base.run.percentile_ms(q))} -> {_ms(on.run.percentile_ms(q))} ms" for q in (50, 99))
    line = (
        f"\nBelow saturation, at a steady {rate:.0f} calls/s for both, in {len(on.turn_rates)} rounds of "
        f"turns: sampling every call against sampling nothing, p50 {p50}, p99 {p99}"
    )
    if (cpu := on.cpu_change(base)) is not None:
        line += f", CPU per call **{cpu:+.1%}**"
        if rounds := on.cpu_changes(base):
            line += f" (the median of the rounds', {min(rounds):+.1%} to {max(rounds):+.1%})"
    errors = sum(t.run.errors + t.run.dropped for t in (on, base))
    lines = [line + (f"; {errors} calls failed or dropped." if errors else ".")]
    if by_process := _by_process(on, base):
        lines.append(by_process)
    return lines


def _by_process(on: TracingRun, base: TracingRun) -> str | None:
    """Sampling's extra CPU per call in each part of the graph, each the median of the rounds'."""
    change = on.cpu_by_part_change(base)
    if not change:
        return None
    return (
        "Sampling's CPU per call, by process (ms more than sampling nothing): "
        + ", ".join(f"{part} {ms:+.2f}" for part, ms in change.items())
        + "."
    )


#: The steps from a stack with tracing off to one sampling every call, as the tracing section names them.
_STEPS_FROM_OFF = (
    ("propagated", "tracing off, a caller's traceparent passed on"),
    ("unsampled", "tracing on, sampling nothing"),
    ("on", "tracing on, sampling every call"),
)


def _steps_from_off(results: BenchResults) -> str | None:
    """Each mode's rate against tracing off, the median of the rounds' ratios: where along the way from
    tracing off to sampling every call the throughput goes. None without the propagated mode (the
    other two have their own lines)."""
    off, propagated = results.tracing["off"], results.tracing.get("propagated")
    if propagated is None or not propagated.rate:
        return None
    steps = [
        f"{how}: {mode.ratio(off):.2f}"
        + ("" if (cpu := mode.cpu_change(off)) is None else f" ({cpu:+.1%} CPU per call)")
        for key, how in _STEPS_FROM_OFF
        if (mode := results.tracing.get(key)) is not None and mode.rate
    ]
    return "Against tracing off, step by step (each the median of the rounds'): " + "; ".join(steps) + "."


def _by_process_against_off(results: BenchResults) -> str | None:
    """What each step from tracing off costs each part of the graph (a traced caller's context passed on,
    tracing on sampling nothing, sampling every call), against the stack with tracing off: each the
    median of the rounds'."""
    off = results.tracing["off"]
    parts = [
        f"{how}: " + ", ".join(f"{part} {ms:+.2f}" for part, ms in change.items())
        for key, how in _STEPS_FROM_OFF
        if (mode := results.tracing.get(key)) is not None and (change := mode.cpu_by_part_change(off))
    ]
    if not parts:
        return None
    return "Tracing's CPU per call, by process (ms more than tracing off): " + "; ".join(parts) + "."


def targets_table(results: BenchResults) -> str:
    rows = ["| target | goal | this run | result |", "|---|---|---|---|"]
    for t in evaluate(results):
        rows.append(f"| {t.name} | {t.goal} | {t.figures} | **{t.verdict}** |")
    return "\n".join(rows)


def half_load_summary(results: BenchResults) -> str:
    half = results.half_load
    if half is None:
        return "The graph sustained none of its rates, so there is no half-saturation run."
    run = half.run
    return (
        f"The graph at half its max sustained rate ({run.offered_rate:.0f}/s): "
        f"p50 {_ms(run.percentile_ms(50))} ms, p99 {_ms(run.percentile_ms(99))} ms, "
        f"p999 {_ms(run.percentile_ms(99.9))} ms, "
        f"{run.errors + run.dropped} errors, CPU {half.cpu_per_1000:.2f} s per 1000 requests."
    )
