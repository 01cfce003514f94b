"""Runs the real tritonserver binary that the nvidia-pytriton wheel ships in the triton environment.

The triton environment (numpy 1.x, onnxruntime) is separate from the project's: the Python backend's stub
embeds the first `python3` on PATH, and with numpy 2 there it reads every input as zeros. So this module
uses only the standard library, and the server it starts gets the triton environment first on PATH.

    python -m services.predict.tritonserver --model-repository services/predict/model_repository
"""

import argparse
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

TRITON_ENV_VARIABLE = "SCOREGRAPH_TRITON_ENV"
OTLP_URL_VARIABLE = "SCOREGRAPH_TRITON_OTLP_TRACES_URL"
TRITON_SERVICE_NAME = "scoregraph-triton"
DEFAULT_TRITON_ENV = Path(__file__).resolve().parents[2] / ".venv-triton"
MODEL_CONTROL_MODES = ("none", "poll", "explicit")


@dataclass(frozen=True)
class TritonInstallation:
    env: Path
    distribution: Path

    @classmethod
    def locate(cls, env: Path | None = None) -> "TritonInstallation":
        env = Path(env or os.environ.get(TRITON_ENV_VARIABLE) or DEFAULT_TRITON_ENV).absolute()
        binaries = sorted(env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not binaries:
            raise FileNotFoundError(
                f"no tritonserver under {env}; set {TRITON_ENV_VARIABLE} to an environment "
                "with nvidia-pytriton installed"
            )
        return cls(env, binaries[0].parents[1])

    @property
    def binary(self) -> Path:
        return self.distribution / "bin" / "tritonserver"

    @property
    def libraries(self) -> Path:
        return self.distribution.parents[1] / "nvidia_pytriton.libs"

    @property
    def python_version(self) -> str:
        return self.distribution.parents[2].name.removeprefix("python")

    def backend_directory(self) -> Path:
        """A backend directory whose Python backend has the stub built for this environment's Python.

        The wheel keeps one stub per Python version apart from the backend, and the backend looks for the stub
        next to itself; pytriton copies the lot per run, links here do the same once, outside site-packages.
        """
        backends = self.env / "scoregraph-triton-backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        sources = [*(self.distribution / "backends" / "python").iterdir()]
        sources.append(
            self.distribution / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"
        )
        for source in sources:
            link = python_backend / source.name
            if link.is_symlink() and link.readlink() == source:
                continue
            # Replaced with a rename so servers starting side by side never see a missing or dangling link.
            staged = link.with_name(f".{source.name}.{os.getpid()}")
            staged.unlink(missing_ok=True)
            staged.symlink_to(source)
            os.replace(staged, link)
        return backends


def trace_args(environ: Mapping[str, str]) -> list[str]:
    """tritonserver's OpenTelemetry trace options, from the OTEL_* variables the services read too.

    Triton exports OTLP over HTTP only: it takes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (a full URL) or
    OTEL_EXPORTER_OTLP_ENDPOINT (a base URL, `/v1/traces` appended) when the protocol is http/protobuf,
    and SCOREGRAPH_TRITON_OTLP_TRACES_URL over either, e.g. when the services export over gRPC. A Score
    call's traceparent header makes Triton's request span (with its queue and compute timestamps) a child
    of the gateway's predict attempt span.

    What Triton traces is the gateway's decision. tritonserver traces every request that carries a trace
    context, whatever its W3C sampled flag says (server issue 8474), and samples the others at its own
    rate, one in `rate`. So the gateway sends the context only with the calls it samples, and Triton's rate
    is 0: it traces no request that comes without one. At any sampler and ratio, Triton's spans are then
    those of the sampled calls, each in its call's trace; with a rate of its own (one in 1/ratio, as
    before) and the context on every call, it traced nearly every call, 90 % of them at a ratio of 0.1 in
    traces holding nothing but Triton's spans.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return []
    url = environ.get(OTLP_URL_VARIABLE, "").strip()
    if not url:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if protocol != "http/protobuf":
            return []
        url = traces or (f"{base.rstrip('/')}/v1/traces" if base else "")
    if not url:
        return []
    if not _samples_some(environ):
        return []
    service = environ.get("OTEL_SERVICE_NAME") or TRITON_SERVICE_NAME
    options = [
        "mode=opentelemetry",
        # Timestamps only: TENSORS would put the feature values into the spans.
        "level=TIMESTAMPS",
        # Only the requests whose caller sent a trace context (the gateway's sampled calls).
        "rate=0",
        "count=-1",
        f"opentelemetry,url={url}",
        f"opentelemetry,resource=service.name={service}",
    ]
    for variable, option in _BATCH_OPTIONS.items():
        value = environ.get(variable, "").strip()
        if value.isdigit():
            options.append(f"opentelemetry,{option}={value}")
    return [f"--trace-config={option}" for option in options]


#: The batch span processor's settings tritonserver's exporter takes, by the OTEL_BSP_* variable that sets
#: them for the services (a value that is not a whole number is left to Triton's default, 5000 ms, 2048
#: spans and 512; OTEL_BSP_EXPORT_TIMEOUT has no Triton option).
_BATCH_OPTIONS = {
    "OTEL_BSP_SCHEDULE_DELAY": "bsp_schedule_delay",
    "OTEL_BSP_MAX_QUEUE_SIZE": "bsp_max_queue_size",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "bsp_max_export_batch_size",
}


def _samples_some(environ: Mapping[str, str]) -> bool:
    """Whether the services' sampler (the OTEL_TRACES_SAMPLER variables) can sample a call: a parent-based
    one samples the calls a caller sampled, whatever it does with the others."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler.startswith("parentbased_"):
        return True
    if sampler == "always_off":
        return False
    if sampler == "traceidratio":
        try:
            return float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")) > 0
        except ValueError:
            return True
    return True


@dataclass(frozen=True)
class ServerCommand:
    argv: list[str]
    env: dict[str, str]


def shm_prefix(grpc_port: int) -> str:
    """Name prefix of a server's Python-backend shared memory regions (in /dev/shm)."""
    return f"scoregraph_triton_{grpc_port}_"


def remove_stale_shm(grpc_port: int, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove the regions a killed server on this port left behind (SIGKILL skips Triton's clean-up); a
    live server can't be holding them, since it would hold the port too. Returns what was removed."""
    removed = []
    for region in shm.glob(f"{shm_prefix(grpc_port)}*"):
        region.unlink(missing_ok=True)
        removed.append(region)
    return removed


def server_command(
    model_repository: Path,
    *,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    host: str = "127.0.0.1",
    model_control_mode: str = "none",
    installation: TritonInstallation | None = None,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ServerCommand:
    """tritonserver's command line and environment; its trace options and environment from `environ`
    (default: this process's)."""
    if model_control_mode not in MODEL_CONTROL_MODES:
        raise ValueError(
            f"model control mode must be one of {MODEL_CONTROL_MODES}, got {model_control_mode!r}"
        )
    installation = installation or TritonInstallation.locate()
    argv = [
        str(installation.binary),
        f"--model-repository={Path(model_repository).absolute()}",
        f"--backend-directory={installation.backend_directory()}",
        # tritonserver binds every interface unless told: its HTTP API changes trace and log settings and,
        # in explicit mode, loads and unloads models, for anyone who can reach it.
        # It joins address and port with a colon for gRPC: an IPv6 address needs its brackets there.
        f"--grpc-address={f'[{host}]' if ':' in host else host}",
        f"--grpc-port={grpc_port}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--model-control-mode={model_control_mode}",
        # Python-backend shared memory regions are named per server, so servers on one host never collide.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(grpc_port)}",
    ]
    if model_control_mode == "explicit":
        argv.append("--load-model=*")
    env = dict(os.environ if environ is None else environ)
    argv.extend(trace_args(env))
    argv.extend(extra_args)

    # The stub's Python must see the triton environment's packages and nothing else.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env["PATH"] = os.pathsep.join(filter(None, [str(installation.env / "bin"), env.get("PATH")]))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(installation.libraries), env.get("LD_LIBRARY_PATH")])
    )
    return ServerCommand(argv, env)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(
        prog="python -m services.predict.tritonserver",
        description="Run tritonserver from the triton environment, killing it should it hang after a crash. "
        "Other options go to tritonserver.",
    )
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the gRPC, HTTP and metrics servers bind (0.0.0.0: all)"
    )
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--model-control-mode",
        choices=MODEL_CONTROL_MODES,
        default="none",
        help="none: load the repository at start, exit if a model fails; explicit: also load over the API",
    )
    parser.add_argument(
        "--triton-env",
        type=Path,
        help=f"environment with nvidia-pytriton (default: ${TRITON_ENV_VARIABLE} or .venv-triton)",
    )
    args, extra_args = parser.parse_known_args(argv)
    command = server_command(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        model_control_mode=args.model_control_mode,
        installation=TritonInstallation.locate(args.triton_env),
        extra_args=extra_args,
    )
    remove_stale_shm(args.grpc_port)
    sys.exit(run_watched(command, leave_stops_to_server=True, end_orphans_after_s=1.0))


# tritonserver's handler for a fatal signal prints this, then a backtrace, then exits. When the crash was in
# the allocator, the backtrace can deadlock and the server hangs forever, port open and answering nothing.
_FATAL_SIGNAL_LINE = re.compile(r"^Signal \((\d+)\) received\.")
_FATAL_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE})


def run_watched(
    command: ServerCommand,
    *,
    grace_s: float = 5.0,
    leave_stops_to_server: bool = False,
    end_orphans_after_s: float | None = None,
) -> int:
    """Run tritonserver, relaying its output; if it reports a fatal signal and has not exited `grace_s`
    later, kill it. Returns the exit status a shell would give (128 + the signal after a crash), so a
    supervisor restarts a crashed server rather than leave a hung one in place.

    With `leave_stops_to_server`, this process ignores SIGTERM and SIGINT once the server runs: tritonserver
    gets them with its process group, drains, and its exit ends this process.

    With `end_orphans_after_s`, this process adopts what the server leaves behind (Linux's child subreaper)
    and, once the server has exited, kills whatever of it still runs that many seconds later. The Python
    backend's stub of a server killed under load can hang in its own exit (here, 1 time in 6 at least;
    otherwise it is gone within 0.5 s), holding its shared memory: it ran on, its parent init, after the
    whole stack had stopped. Only for a process with no other children: it takes them all for the server's."""
    if end_orphans_after_s is not None:
        _adopt_orphans()
    child = subprocess.Popen(
        command.argv, env=command.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if leave_stops_to_server:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    crashed: list[int] = []

    def relay() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            fatal = _FATAL_SIGNAL_LINE.match(line)
            if fatal and int(fatal.group(1)) in _FATAL_SIGNALS and not crashed:
                crashed.append(int(fatal.group(1)))
                watchdog = threading.Timer(grace_s, _kill_if_running, [child])
                watchdog.daemon = True
                watchdog.start()

    # Output is relayed on a thread of its own: the Python backend's stubs inherit the pipe and can outlive
    # a killed server, so its end is not the server's end. The server's exit is.
    relaying = threading.Thread(target=relay, name="tritonserver-output", daemon=True)
    relaying.start()
    status = child.wait()
    if end_orphans_after_s is not None:
        _end_orphans(end_orphans_after_s)
    relaying.join(timeout=1.0)
    if crashed:
        return 128 + crashed[0]
    return 128 - status if status < 0 else status


_PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Become the parent of this process's orphaned descendants (rather than init), where Linux allows."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    """This process's children still running (zombies reaped on the way)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid == 0:
            break
    me, children = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # pid (command) state ppid ...: the command may hold spaces and parentheses.
                state, ppid = stat.read().rpartition(")")[2].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == me and state != "Z":
            children.append(int(entry))
    return children


def _end_orphans(after_s: float) -> None:
    """Wait up to `after_s` for the children left to exit on their own, then SIGKILL and reap them."""
    deadline = time.monotonic() + after_s
    while (left := _children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not left:
        return
    print(f"tritonserver left {len(left)} process(es) running {after_s:g} s after it: killing", flush=True)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 5.0
    while _children() and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_if_running(child: subprocess.Popen) -> None:
    if child.poll() is None:
        print("tritonserver hung after a fatal signal: killing it", flush=True)
        child.kill()


if __name__ == "__main__":
    main()
