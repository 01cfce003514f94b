from services.bench.hedging import hop_summary
from services.bench.plots import cdf_points
from services.bench.report import write_report
from tests.bench.fabricated import make_run, results

MACHINE = {
    "cpu": "test cpu",
    "cores": 2,
    "python": "3.11",
    "versions": {"grpcio": "1"},
    "tritonserver": "2.51.0",
    "mode": "quick",
    "duration_s": 1.0,
    "phases": [("19:30:19Z", "inputs"), ("19:31:05Z", "hedging, in turns")],
    "saturation_concurrency": 16,
    "bsp_schedule_delay_ms": 5000,
}
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_report_has_every_contender_the_targets_hedging_tracing_and_both_plots(tmp_path):
    bench = results()

    write_report(tmp_path, bench, MACHINE)

    report = (tmp_path / "report.md").read_text()
    for section in ("## Summary", "## Targets (issue #6)", "## Hedging with one slow replica", "## Tracing"):
        assert section in report
    for contender in bench.contenders:
        assert f"| {contender.name} |" in report
    assert "| Hedging: tail | slow replica: hedged p99 <= 0.2 x unhedged p99 |" in report
    assert (
        "Sampled every call / the same stack sampling nothing: **0.95** at saturation, the median of 3 "
        "rounds (each sampled turn beside its round's: 0.56 to 0.98); all turns together 0.83; "
        "CPU per call +8.0%." in report
    )
    # By process, each the median of the rounds: the slowed turn moves none of them.
    assert (
        "Sampling's CPU per call, by process (ms more than sampling nothing): features +0.20, "
        "gateway +0.30, receiver +0.10, tritonserver +0.20." in report
    )
    assert (
        "Sampled every call / a stack with tracing off: **0.90** at saturation, the median of 3 rounds "
        "(each sampled turn beside its round's: 0.55 to 1.00); all turns together 0.81; CPU per call +12.0%."
        in report
    )
    # Each mode against tracing off, the median of the rounds': the slowed sampled turn moves none of them.
    assert (
        "Against tracing off, step by step (each the median of the rounds'): tracing off, a caller's "
        "traceparent passed on: 0.98 (+1.0% CPU per call); tracing on, sampling nothing: 0.98 (+4.0% CPU per "
        "call); tracing on, sampling every call: 0.90 (+12.0% CPU per call)." in report
    )
    assert (
        "Tracing's CPU per call, by process (ms more than tracing off): tracing off, a caller's traceparent "
        "passed on: features +0.00, gateway +0.10, tritonserver +0.00; tracing on, sampling nothing: "
        "features +0.10, gateway +0.20, tritonserver +0.10; tracing on, sampling every call: features +0.30, "
        "gateway +0.50, receiver +0.10, tritonserver +0.30." in report
    )
    assert "| on | 163 | 22.02 | 22.02 | 12.00 | - | - |" in report
    # Below saturation: the rounds' CPU per call +4 % and +8 %, their median the figure.
    assert (
        "Below saturation, at a steady 80 calls/s for both, in 2 rounds of turns: sampling every call "
        "against sampling nothing, p50 12.01 -> 12.41 ms, p99 30.02 -> 31.01 ms, CPU per call **+6.0%** "
        "(the median of the rounds', +4.0% to +8.0%).\nSampling's CPU per call, by process (ms more than "
        "sampling nothing): features +0.15, gateway +0.30, receiver +0.15." in report
    )
    for plot in ("latency_vs_load.png", "hedging_cdf.png"):
        assert f"]({plot})" in report
        assert (tmp_path / plot).read_bytes().startswith(PNG)


def test_a_rate_the_contender_never_failed_is_reported_as_a_lower_bound(tmp_path):
    write_report(tmp_path, results(), MACHINE)

    # The features service sustained 300/s and failed 600/s; no contender here sustained its top rate.
    assert "| features_service | 1.30 | 1.30 | 1.30 | 300 | 1.00 |" in (tmp_path / "report.md").read_text()
    bench = results()
    bench.contenders[-1].steps.pop()  # feast_server: only its sustained 100/s is left
    write_report(tmp_path, bench, MACHINE)
    assert "| feast_server | 5.00 | 5.00 | 5.00 | >= 100 | 1.00 |" in (tmp_path / "report.md").read_text()


def test_the_cdf_rises_to_every_call():
    latencies, shares = cdf_points(make_run([1.0, 2.0, 2.0, 50.0]))

    assert latencies == sorted(latencies)
    assert shares == [0.25, 0.75, 1.0]


def test_extra_requests_are_the_attempts_beyond_one_per_call_between_two_readings():
    def reading(calls: float, first: float, hedges: float) -> dict:
        attempts = "scoregraph_hop_attempts_total"
        return {
            ("scoregraph_hop_calls_total", (("hop", "features"),)): calls,
            (attempts, (("hop", "features"), ("outcome", "won"))): first,
            (attempts, (("hop", "features"), ("outcome", "cancelled"))): hedges,
            ("scoregraph_hop_calls_total", (("hop", "predict"),)): 999.0,
        }

    summary = hop_summary(reading(100, 100, 0), reading(300, 300, 10), "features")

    assert (summary["calls"], summary["attempts"], summary["cancelled"]) == (200, 210, 10)
    assert summary["extra_ratio"] == 0.05


def test_replica_restarts_during_the_run_are_reported(tmp_path):
    respawned = "respawning python -m services.predict.tritonserver (it died with status 139)"
    (tmp_path / "stack-graph.log").write_text(
        f"13:57:19 triton-0      | Signal (11) received.\n13:57:20 triton-0      | {respawned}\n"
    )
    (tmp_path / "stack-slow.log").write_text("13:58:00 gateway | serving\n")
    # A stack whose processes write their own logs (service_logs): no supervisor prefix.
    (tmp_path / "stack-untraced").mkdir()
    aborted = "19:32:58Z respawning python -m services.predict.tritonserver (it died with status 134)"
    (tmp_path / "stack-untraced" / "triton-1.log").write_text(f"Signal (6) received.\n{aborted}\n")

    write_report(tmp_path, results(), MACHINE)

    report = (tmp_path / "report.md").read_text()
    assert "Replica restarts during the run (the figures include them):" in report
    assert f"- stack-graph.log: {respawned}" in report
    assert f"- stack-untraced/triton-1.log: {aborted}" in report
    # The timeline places it: the restart at 19:32:58 fell in the phase begun at 19:31:05.
    assert "## Timeline (UTC)\n- 19:30:19Z inputs\n- 19:31:05Z hedging, in turns" in report


def test_a_run_without_restarts_says_so(tmp_path):
    write_report(tmp_path, results(), MACHINE)

    assert "Replica restarts during the run: none." in (tmp_path / "report.md").read_text()


def test_the_tracing_section_leaves_out_what_was_not_measured_below_saturation(tmp_path):
    bench = results()
    bench.tracing_steady["on"].turn_cpu_per_1000 = []
    bench.tracing_steady["on"].run.errors = 2
    write_report(tmp_path, bench, MACHINE)
    report = (tmp_path / "report.md").read_text()
    # Without every turn's CPU on both sides, no CPU figure; the failed calls are told.
    assert "p99 30.02 -> 31.01 ms; 2 calls failed or dropped.\n\n" in report

    bench.tracing_steady.clear()
    write_report(tmp_path, bench, MACHINE)
    assert "Below saturation" not in (tmp_path / "report.md").read_text()


def test_the_tracing_section_gives_the_steps_from_tracing_off_only_when_the_propagated_mode_ran(tmp_path):
    bench = results()
    del bench.tracing["propagated"]
    write_report(tmp_path, bench, MACHINE)
    report = (tmp_path / "report.md").read_text()

    assert "step by step" not in report
    assert "traceparent passed on" not in report
    # The other modes' lines against tracing off stay.
    assert "Sampled every call / a stack with tracing off: **0.90**" in report
    assert (
        "Tracing's CPU per call, by process (ms more than tracing off): tracing on, sampling nothing: "
        "features +0.10, gateway +0.20, tritonserver +0.10; tracing on, sampling every call:" in report
    )
