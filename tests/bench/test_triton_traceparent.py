"""Which trace contexts a real tritonserver continues over gRPC and over HTTP
(services.bench.triton_traceparent)."""

import subprocess
import sys

import pytest

from services.bench import triton_traceparent

pytestmark = pytest.mark.integration

CALLS = 40


def test_every_call_over_http_and_most_over_grpc_are_continued_and_every_one_is_accounted_for(tmp_path):
    results = {r.endpoint: r for r in triton_traceparent.measure(CALLS, tmp_path)}

    assert results["HTTP"].continued == CALLS
    grpc = results["gRPC"]
    assert grpc.sent == CALLS
    assert grpc.continued + grpc.lost == CALLS
    # tritonserver 2.51 loses a few in 100 over gRPC (fewer while its heap is fresh); a tool that did not
    # send the context over gRPC, or read the receiver wrongly, would see none continued.
    assert grpc.continued >= CALLS * 3 // 4, grpc


def test_grpc_loses_contexts_when_the_bytes_after_the_header_in_tritonservers_heap_are_not_zero(tmp_path):
    """The cause, shown: new memory filled with 0xfe (glibc's MALLOC_PERTURB_=1, for tritonserver alone)
    makes the gRPC frontend's strlen run past the 55 characters far more often. Should this fail after an
    upgrade of nvidia-pytriton, tritonserver reads the header by its length now: tests/e2e/telemetry.py's
    UNCONTINUED_BY_TRITON, the demo's line on traces without Triton's spans and the README's note on it can
    go."""
    results = {r.endpoint: r for r in triton_traceparent.measure(CALLS, tmp_path, perturb=1)}

    assert results["HTTP"].continued == CALLS
    assert results["gRPC"].lost > 0, results["gRPC"]


def test_the_command_line_prints_both_endpoints():
    done = subprocess.run(
        [sys.executable, "-m", "services.bench.triton_traceparent", "--calls", "5"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["gRPC", "HTTP"]
    assert lines[1].startswith("HTTP: 5 of 5 calls continued")
