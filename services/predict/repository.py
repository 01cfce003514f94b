"""Writes Triton model repositories from one served ONNX file.

Two repositories hold the same model.onnx and the same feature contract: a CPU one for the embedded stack
(Python backend running onnxruntime, which also checks the contract at load) and a GPU one for production
(Triton's onnxruntime backend with TensorRT). Both are generated, never committed.
"""

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.predict.contract import INPUT_TENSOR, OUTPUT_TENSOR
from services.predict.onnx_export import ServingModel, read_serving_model

CPU_REPOSITORY = Path(__file__).parent / "model_repository"
GPU_REPOSITORY = Path(__file__).parent / "model_repository_gpu"
BACKEND_SOURCE = Path(__file__).parent / "triton_backend.py"

MAX_BATCH_SIZE = 256
# How long a request waits for others to share its batch. On CPU, none: an idle instance runs a request at
# once (waiting 500 us cost 0.65 ms of p50 at one call in flight), and under load the requests that queue
# while it computes still form the next batch. A GPU gains more from fuller batches.
CPU_QUEUE_DELAY_US = 0
GPU_QUEUE_DELAY_US = 500


def write_repositories(
    onnx_path: Path, version: int, *, cpu_root: Path = CPU_REPOSITORY, gpu_root: Path = GPU_REPOSITORY
) -> ServingModel:
    """Write `version` of the model in `onnx_path` to both repositories, keeping their other versions."""
    if version < 1:
        raise ValueError(f"Triton model versions are positive integers, got {version}")
    served = read_serving_model(onnx.load(onnx_path, load_external_data=False))
    _write_version(
        cpu_root / served.name,
        version,
        cpu_config(served),
        {"model.onnx": onnx_path, "model.py": BACKEND_SOURCE},
    )
    _write_version(gpu_root / served.name, version, gpu_config(served), {"model.onnx": onnx_path})
    return served


def cpu_config(served: ServingModel) -> mc.ModelConfig:
    config = _base_config(served, queue_delay_us=CPU_QUEUE_DELAY_US)
    config.backend = "python"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def gpu_config(served: ServingModel) -> mc.ModelConfig:
    config = _base_config(served, queue_delay_us=GPU_QUEUE_DELAY_US)
    config.platform = "onnxruntime_onnx"
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    # Verdict thresholds are tuned on FP32 scores; FP16 would move scores near a threshold.
    tensorrt.parameters["precision_mode"] = "FP32"
    tensorrt.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def _base_config(served: ServingModel, *, queue_delay_us: int) -> mc.ModelConfig:
    contract = served.contract
    config = mc.ModelConfig(name=served.name, max_batch_size=MAX_BATCH_SIZE)
    config.input.add(name=INPUT_TENSOR, data_type=mc.TYPE_FP32, dims=[contract.width])
    config.output.add(name=OUTPUT_TENSOR, data_type=mc.TYPE_FP32, dims=[1])
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    for key, value in contract.as_parameters().items():
        config.parameters[key].string_value = value
    return config


def _write_version(model_dir: Path, version: int, config: mc.ModelConfig, files: dict[str, Path]) -> None:
    # Each part lands with a rename, so a Triton polling the repository never loads a half-written version.
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    staging.chmod(0o755)
    for name, source in files.items():
        shutil.copyfile(source, staging / name)
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    staging.rename(version_dir)

    config_staging = model_dir / ".config.pbtxt"
    config_staging.write_text(text_format.MessageToString(config))
    os.replace(config_staging, model_dir / "config.pbtxt")
