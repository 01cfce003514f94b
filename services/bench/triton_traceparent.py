"""How many of the trace contexts it is sent tritonserver continues, over its gRPC and its HTTP endpoint.

    python -m services.bench.triton_traceparent [--calls 500] [--perturb N]

One tritonserver on the stack's model repository, tracing as the stack runs it (OpenTelemetry mode, trace
rate 0: only a request that comes with a trace context is traced), exports to an OTLP receiver in this
process. The same inference goes to it `--calls` times over gRPC (tritonclient, as the gateway calls it) and
as many over HTTP (the KServe v2 JSON body), alternately, each call with a fresh sampled `traceparent`; a
call whose trace id never reaches the receiver was not continued.

tritonserver 2.51 (nvidia-pytriton 0.7.0) loses some of the gRPC calls' contexts and none of the HTTP
calls'. Its gRPC frontend reads the header through `GrpcServerCarrier::Get`, which returns the metadata
value's start and takes its length with `strlen` (the binary's disassembly shows the call); gRPC does not
end a metadata value with a NUL, so whenever the byte after the 55 characters is not zero, the header reads
as longer and OpenTelemetry's W3C parser refuses it. That byte is whatever tritonserver's heap held there.
`--perturb` sets glibc's MALLOC_PERTURB_ for tritonserver alone (1: new memory filled with 0xfe), which
turns that byte non-zero far more often. On 2026-11-23, 2 ms apart: gRPC lost 59 of 1,000 (2-6 in 100 over
several runs), HTTP none of 1,600; with MALLOC_PERTURB_=1, gRPC lost 99 and 134 of 300.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from services.bench.processes import TRITON_TRACEPARENT_PORT
from services.predict.tritonserver import server_command
from services.stack.collector import TraceCollector
from services.stack.topology import StackSettings, unproxied_loopback

#: How long the receiver waits for tritonserver's last batch (its exporter runs 100 ms apart here).
EXPORT_WAIT_S = 3.0
START_TIMEOUT_S = 120
SCHEDULE_DELAY_MS = 100


@dataclass(frozen=True)
class Continued:
    """Of `sent` calls over an endpoint, how many tritonserver traced in the caller's trace."""

    endpoint: str
    sent: int
    continued: int

    @property
    def lost(self) -> int:
        return self.sent - self.continued


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def measure(calls: int, out: Path, *, perturb: int | None = None, gap_s: float = 0.002) -> list[Continued]:
    """`calls` inferences over each endpoint, alternately; what tritonserver continued of each."""
    grpc_port, http_port, metrics_port = (TRITON_TRACEPARENT_PORT + i for i in range(3))
    with contextlib.ExitStack() as cleanup:
        receiver = TraceCollector(max_traces=4 * calls + 100).start()
        cleanup.callback(receiver.stop)
        environ = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": str(SCHEDULE_DELAY_MS),
        }
        repository = StackSettings().model_repository
        command = server_command(
            repository,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            environ={**os.environ, **environ},
        )
        # Loopback unproxied, as the stack has it. tritonserver 2.51's exporter posts through http_proxy
        # all the same (seen with http_proxy set: every post refused by the proxy), so with a proxy set this
        # measures nothing; the stack's Triton, given the same variables, would lose its spans the same way.
        env = unproxied_loopback(dict(command.env))
        if perturb is not None:
            env["MALLOC_PERTURB_"] = str(perturb)
        log = out / "tritonserver.log"
        with log.open("wb") as log_file:
            # Its environment as server_command made it (no PYTHONPATH: the stubs' Python is the triton
            # environment's), in a session of its own, so its Python-backend stubs stop with it.
            server = subprocess.Popen(
                command.argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        cleanup.callback(_stop, server)
        # Nor through a proxy for this process's own calls (grpc honours http_proxy too).
        client = triton.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", channel_args=[("grpc.enable_http_proxy", 0)]
        )
        cleanup.callback(client.close)
        _wait_until_ready(client, server, log)
        model = next(p.name for p in sorted(repository.iterdir()) if (p / "config.pbtxt").exists())
        tensor = client.get_model_metadata(model).inputs[0]
        width = int(tensor.shape[-1])
        row = np.random.default_rng(0).random((1, width), dtype=np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {"name": tensor.name, "shape": [1, width], "datatype": "FP32", "data": row[0].tolist()}
                ]
            }
        ).encode()
        unproxied = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        sent: dict[str, list[str]] = {"gRPC": [], "HTTP": []}
        for _ in range(calls):
            trace_id, header = _traceparent()
            request = triton.InferInput(tensor.name, [1, width], "FP32")
            request.set_data_from_numpy(row)
            client.infer(model, [request], headers={"traceparent": header})
            sent["gRPC"].append(trace_id)
            time.sleep(gap_s)
            trace_id, header = _traceparent()
            http_request = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/v2/models/{model}/infer",
                data=body,
                headers={"traceparent": header, "Content-Type": "application/json"},
            )
            with unproxied.open(http_request, timeout=10) as response:
                response.read()
            sent["HTTP"].append(trace_id)
            time.sleep(gap_s)
        everything = [t for ids in sent.values() for t in ids]
        receiver.wait_for(lambda r: all(r.trace(t) for t in everything), EXPORT_WAIT_S)
        return [
            Continued(endpoint, len(ids), sum(1 for t in ids if receiver.trace(t)))
            for endpoint, ids in sent.items()
        ]


def _wait_until_ready(client: triton.InferenceServerClient, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(InferenceServerException):
            if client.is_server_ready(client_timeout=1):
                return
        time.sleep(0.25)
    raise RuntimeError(f"tritonserver did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls over each endpoint")
    parser.add_argument("--perturb", type=int, default=None, help="MALLOC_PERTURB_ for tritonserver alone")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triton-traceparent-") as out:
        results = measure(args.calls, Path(out), perturb=args.perturb)
    for result in results:
        print(
            f"{result.endpoint:>4}: {result.continued} of {result.sent} calls continued in the caller's "
            f"trace, {result.lost} lost ({100 * result.lost / result.sent:.1f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
