import hashlib
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.predict.contract import FeatureContract
from services.predict.repository import CPU_QUEUE_DELAY_US, GPU_QUEUE_DELAY_US, write_repositories

from .fraud_model import FEATURE_NAMES, FEATURE_SERVICE, MODEL_NAME


def _parse_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cpu_and_gpu_repositories_serve_the_same_model_and_contract(model_onnx, tmp_path):
    cpu_root, gpu_root = tmp_path / "cpu", tmp_path / "gpu"

    write_repositories(model_onnx, 3, cpu_root=cpu_root, gpu_root=gpu_root)

    cpu, gpu = _parse_config(cpu_root / MODEL_NAME), _parse_config(gpu_root / MODEL_NAME)
    assert (cpu.backend, cpu.instance_group[0].kind) == ("python", mc.ModelInstanceGroup.KIND_CPU)
    assert (gpu.platform, gpu.instance_group[0].kind) == ("onnxruntime_onnx", mc.ModelInstanceGroup.KIND_GPU)
    assert [a.name for a in gpu.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]
    expected = FeatureContract(FEATURE_SERVICE, FEATURE_NAMES)
    for config in (cpu, gpu):
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        assert FeatureContract.from_parameters(parameters) == expected
        assert list(config.input[0].dims) == [len(FEATURE_NAMES)]
        assert config.HasField("dynamic_batching")
    assert cpu.dynamic_batching.max_queue_delay_microseconds == CPU_QUEUE_DELAY_US
    assert gpu.dynamic_batching.max_queue_delay_microseconds == GPU_QUEUE_DELAY_US > 0
    hashes = {_sha256(root / MODEL_NAME / "3" / "model.onnx") for root in (cpu_root, gpu_root)}
    assert hashes == {_sha256(model_onnx)}
    assert (cpu_root / MODEL_NAME / "3" / "model.py").is_file()


def test_writing_a_version_keeps_the_others(model_onnx, tmp_path):
    for version in (1, 2, 2):
        write_repositories(model_onnx, version, cpu_root=tmp_path / "cpu", gpu_root=tmp_path / "gpu")

    for root in ("cpu", "gpu"):
        assert sorted(p.name for p in (tmp_path / root / MODEL_NAME).iterdir()) == ["1", "2", "config.pbtxt"]
