import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from services.predict.contract import FeatureContract
from services.predict.onnx_export import to_serving_onnx
from services.predict.repository import write_repositories
from services.predict.tritonserver import server_command

from .fraud_model import FEATURE_NAMES, FEATURE_SERVICE, MODEL_NAME, train_classifier_export

SERVER_START_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def classifier_export() -> onnx.ModelProto:
    return train_classifier_export()


@pytest.fixture(scope="session")
def write_serving_onnx(classifier_export) -> Callable[..., Path]:
    """Writes the classifier as a served ONNX file under any contract, as the training code does."""

    def write(
        path: Path, *, feature_names: tuple[str, ...] = FEATURE_NAMES, model_name: str = MODEL_NAME
    ) -> Path:
        served = to_serving_onnx(
            classifier_export, FeatureContract(FEATURE_SERVICE, feature_names), model_name
        )
        onnx.save(served, path)
        return path

    return write


@pytest.fixture(scope="session")
def model_onnx(write_serving_onnx, tmp_path_factory) -> Path:
    return write_serving_onnx(tmp_path_factory.mktemp("model") / "model.onnx")


@dataclass(frozen=True)
class RunningTriton:
    grpc_url: str
    model_repository: Path
    log: Path


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_until_ready(process: subprocess.Popen, grpc_url: str, log: Path) -> None:
    client = triton.InferenceServerClient(grpc_url)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tritonserver exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if client.is_server_ready(client_timeout=1):
                return
        except InferenceServerException:
            pass
        time.sleep(0.2)
    pytest.fail(f"tritonserver not ready after {SERVER_START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def running_triton(model_onnx, tmp_path_factory) -> Iterator[RunningTriton]:
    """One real tritonserver for the whole run: it takes seconds to start.

    Explicit model control lets a test add a model to the live repository and load it over the API.
    """
    root = tmp_path_factory.mktemp("triton")
    repository = root / "model_repository"
    write_repositories(model_onnx, 1, cpu_root=repository, gpu_root=root / "model_repository_gpu")
    grpc_port, http_port, metrics_port = _free_ports(3)
    command = server_command(
        repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        model_control_mode="explicit",
    )
    log = root / "tritonserver.log"
    with log.open("wb") as log_file:
        # A session of its own, so the Python-backend stubs it forks can be reaped as one group.
        process = subprocess.Popen(
            command.argv, env=command.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    grpc_url = f"127.0.0.1:{grpc_port}"
    try:
        _wait_until_ready(process, grpc_url, log)
        yield RunningTriton(grpc_url, repository, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
