"""What tracing being on costs one gRPC hop, sampled or not: a postprocess server alone, driven at saturation.

    python -m services.bench.metadata_cost [--rounds 8] [--seconds 3]

Tracing on costs a call something even when it is not sampled: every hop carries a W3C `traceparent`,
which grpcio reads and writes as it does any metadata entry, the server's propagator parses it, and the
server makes a span that records nothing. This measures the parts on the cheapest hop there is, one
postprocess server (one RPC, one span), in five modes, each a server of its own driven closed loop (16 calls
in flight) from this process, in interleaved turns:

- tracing off, the call carries no metadata (the baseline);
- tracing off, the call carries another header as long as a `traceparent` and as fresh: grpcio's share;
- tracing off, the call carries a `traceparent` (a fresh one per call, as a traced caller sends):
  OpenTelemetry's API parses it even with the SDK off (it passes a caller's context on, as the specification
  asks), and the server's log line carries its ids;
- tracing on, the call's `traceparent` says "not sampled": the server's unsampled span added;
- tracing on, the call sampled: its span recorded and exported over OTLP/HTTP to a receiver (in a process
  of its own, its CPU not counted).

Each mode's server CPU per call (over the turn and a pause in which the span processor exports what the turn
left) and this process's, the client's, are the medians of the rounds. On 2026-11-22 (8 rounds of 3 s,
2,250-3,000 calls/s): 396, 429, 434, 465 and 507 us of server CPU per call in the five modes, and the client
217 us without metadata, 237-238 with it (252 sampled). The modes' differences move from run to run by as
much as they are: in a run of the four modes but the second the same day, the traceparent cost the server +80
us, and in a driver of its own (10 rounds of 2 s) the other header +5 and the traceparent +29. A bare
grpc.aio server (a generic handler echoing bytes, no interceptors or with one) spent the same CPU per call
with a header as without, within 7 us, and the postprocess server's +5 to +33 us for the other header lies
inside the runs' spread: grpcio's share is mostly the client's (+10-20 us, making the header included), the
server's mostly the parse and the log line's ids (6 us in a loop of nothing else). A sampled span's recording
and export cost 42-49 us there, where the same span costs 6 us to make and 5 to encode in a loop of nothing
else: in a server, the span processor's encoding took 17-19 us of CPU a span (thread time, measured inside
the server), its caches cold between calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from scoregraph.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc

from services.bench.loadgen import RunResult, closed_loop, interleaved
from services.bench.processes import METADATA_COST_PORT, Spawned, cpu_seconds, listening, wait_until
from services.bench.tracing import RECEIVER_ENDPOINT, TRACING_OFF, start_receiver, tracing_on

#: Calls in flight to each server.
CONCURRENCY = 16
#: The traced servers' span processor delay: each turn is followed by a pause this long (and a little
#: more), in which what the turn left is exported and charged to it.
SCHEDULE_DELAY_MS = 500

Metadata = Callable[[], tuple[tuple[str, str], ...]]


def _no_metadata() -> tuple[tuple[str, str], ...]:
    return ()


def _traceparent(flags: str) -> Metadata:
    return lambda: (("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"),)


def _other_header() -> tuple[tuple[str, str], ...]:
    """A header the server's propagators do not read, as long as a `traceparent` and as fresh."""
    return (("x-request-id", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"),)


@dataclass(frozen=True)
class Mode:
    name: str
    traced: bool
    """The server runs with tracing on (exporting to the receiver), else with tracing off."""
    metadata: Metadata


MODES = (
    Mode("tracing off, no metadata", False, _no_metadata),
    Mode("tracing off, another header", False, _other_header),
    Mode("tracing off, a traceparent", False, _traceparent("00")),
    Mode("tracing on, unsampled", True, _traceparent("00")),
    Mode("tracing on, sampled", True, _traceparent("01")),
)


@dataclass
class ModeResult:
    mode: Mode
    server_us: list[float] = field(default_factory=list)
    """Each turn's server CPU per call, in microseconds."""
    client_us: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def server(self) -> float:
        return statistics.median(self.server_us)

    @property
    def client(self) -> float:
        return statistics.median(self.client_us)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def port_of(index: int) -> int:
    """The gRPC port of the server of MODES[index]; its metrics port is the next one."""
    return METADATA_COST_PORT + 10 * index


def server_env(mode: Mode, port: int) -> dict[str, str]:
    tracing = (
        {**tracing_on(RECEIVER_ENDPOINT), "OTEL_BSP_SCHEDULE_DELAY": str(SCHEDULE_DELAY_MS)}
        if mode.traced
        else TRACING_OFF
    )
    return {
        **tracing,
        "SCOREGRAPH_POSTPROCESS_PORT": str(port),
        "SCOREGRAPH_POSTPROCESS_METRICS_PORT": str(port + 1),
    }


@contextlib.contextmanager
def servers(out: Path) -> Iterator[list[Spawned]]:
    """A postprocess server per mode, on `port_of` its index, once each listens."""
    started: list[Spawned] = []
    try:
        for i, mode in enumerate(MODES):
            port = port_of(i)
            argv = [sys.executable, "-m", "services.postprocess"]
            server = Spawned(argv, server_env(mode, port), out / f"server-{i}.log")
            started.append(server)
            wait_until(lambda port=port: listening("127.0.0.1", port), server, 60, f"postprocess on {port}")
        yield started
    finally:
        for server in started:
            server.stop()


async def measure(rounds: int, turn_s: float) -> list[ModeResult]:
    """Every mode in `rounds` interleaved turns of `turn_s` (after a warm-up turn each)."""
    request = postprocess_pb2.LabelRequest(model_name="fraud_mlp", model_version="1", score=0.3)
    with tempfile.TemporaryDirectory() as scratch:
        receiver = start_receiver(Path(scratch))
        try:
            with servers(Path(scratch)) as started:
                return await _drive(started, request, rounds, turn_s)
        finally:
            receiver.stop()


async def _drive(
    started: list[Spawned], request: postprocess_pb2.LabelRequest, rounds: int, turn_s: float
) -> list[ModeResult]:
    results = [ModeResult(mode) for mode in MODES]
    async with contextlib.AsyncExitStack() as stack:
        slices = {}
        for i, (mode, server, result) in enumerate(zip(MODES, started, results, strict=True)):
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port_of(i)}"))
            stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)

            async def call(_: int, stub=stub, metadata=mode.metadata) -> object:
                return await stub.Label(request, metadata=metadata(), timeout=5)

            await closed_loop(call, seconds=min(turn_s, 2.0), concurrency=CONCURRENCY)  # warm-up
            slices[mode.name] = _turn(call, server, result, turn_s)
        await interleaved(slices, rounds)
    return results


def _turn(
    call: Callable[[int], Awaitable[object]], server: Spawned, result: ModeResult, turn_s: float
) -> Callable[[], Awaitable[RunResult]]:
    async def run() -> RunResult:
        server_before, client_before = cpu_seconds(server.tree), time.process_time()
        turn = await closed_loop(call, seconds=turn_s, concurrency=CONCURRENCY)
        client_after = time.process_time()
        await asyncio.sleep(SCHEDULE_DELAY_MS / 1000 + 0.2)
        calls = max(turn.ok, 1)
        result.server_us.append((cpu_seconds(server.tree) - server_before) / calls * 1e6)
        result.client_us.append((client_after - client_before) / calls * 1e6)
        result.rates.append(turn.achieved_rate)
        result.errors += turn.errors + turn.dropped
        return turn

    return run


def table(results: list[ModeResult]) -> str:
    base = results[0]
    lines = [
        "| call | server CPU us/call | more than no metadata | client CPU us/call | more | calls/s "
        "| errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.mode.name} | {result.server:.0f} | {result.server - base.server:+.0f} | "
            f"{result.client:.0f} | {result.client - base.client:+.0f} | {result.rate:.0f} | "
            f"{result.errors} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.metadata_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved turns of each mode")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one turn")
    args = parser.parse_args()
    print(table(asyncio.run(measure(args.rounds, args.seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
