"""The real tritonserver serving the CPU repository, through the gateway's client."""

import asyncio
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from services.predict.client import InvalidFeatures, ModelUnavailable, PredictClient, PredictTimeout
from services.predict.contract import FeatureContract
from services.predict.repository import write_repositories

from .fraud_model import FEATURE_NAMES, FEATURE_SERVICE, MODEL_NAME

# Run on the fixtures' session loop: a grpc.aio channel only works on the loop it was created on.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Triton runs the same onnxruntime build on the same rows; the only slack is batch-shape-dependent kernels.
SCORE_ATOL = 1e-5


@pytest.fixture
async def client(running_triton):
    async with PredictClient(running_triton.grpc_url, MODEL_NAME) as client:
        await client.load_contract(timeout_s=5)
        yield client


@pytest.fixture
def local_scores(model_onnx):
    session = ort.InferenceSession(model_onnx, providers=["CPUExecutionProvider"])
    return lambda features: session.run(["score"], {"features": features})[0][:, 0]


async def test_contract_and_version_come_from_triton(client):
    assert client.served_model.contract == FeatureContract(FEATURE_SERVICE, FEATURE_NAMES)
    assert client.served_model.version == "1"


async def test_scores_match_onnxruntime_in_process(client, local_scores):
    rng = np.random.default_rng(42)
    # Concurrent requests of different sizes share dynamic batches, which the backend must split back apart.
    batches = [rng.normal(size=(size, len(FEATURE_NAMES))).astype(np.float32) for size in (1, 3, 7, 16, 1, 5)]

    results = await asyncio.gather(*(client.predict(batch, timeout_s=5) for batch in batches))

    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_allclose(result.scores, local_scores(batch), atol=SCORE_ATOL, rtol=0)
        assert (result.model_name, result.model_version) == (MODEL_NAME, "1")


async def test_scores_depend_on_the_input(client, local_scores):
    """Guards against the Python stub embedding a numpy 2 interpreter, which reads every input as zeros."""
    features = np.arange(1, 1 + 4 * len(FEATURE_NAMES), dtype=np.float32).reshape(4, -1) / 10
    zero_score = local_scores(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))[0]

    result = await client.predict(features, timeout_s=5)

    assert not np.allclose(result.scores, zero_score, atol=SCORE_ATOL)
    assert len(np.unique(result.scores)) == len(features)


async def test_refuses_a_vector_of_the_wrong_width(client):
    with pytest.raises(
        InvalidFeatures, match=r"fraud_mlp version 1 takes rows of 6 features .* shape \(1, 5\)"
    ):
        await client.predict(np.zeros((1, 5), dtype=np.float32), timeout_s=5)


async def test_unknown_model_is_unavailable(running_triton):
    async with PredictClient(running_triton.grpc_url, "no_such_model") as client:
        with pytest.raises(ModelUnavailable, match="no_such_model"):
            await client.load_contract(timeout_s=5)


async def test_triton_refuses_a_model_trained_on_another_feature_order(
    running_triton, write_serving_onnx, tmp_path
):
    name = "fraud_mlp_misordered"
    write_repositories(
        write_serving_onnx(tmp_path / "good.onnx", model_name=name),
        1,
        cpu_root=running_triton.model_repository,
        gpu_root=tmp_path / "gpu",
    )
    # As if a retrained model.onnx were dropped into the version folder by hand, without regenerating config.
    swapped = (FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:])
    shutil.copyfile(
        write_serving_onnx(tmp_path / "swapped.onnx", feature_names=swapped, model_name=name),
        running_triton.model_repository / name / "1" / "model.onnx",
    )

    client = triton.InferenceServerClient(running_triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            await client.load_model(name, client_timeout=30)
        assert not await client.is_model_ready(name)
    finally:
        await client.close()

    assert (
        "feature order in model.onnx differs from feature service fraud_model_v1 at position 0: "
        f"model.onnx has {FEATURE_NAMES[1]!r}, config.pbtxt has {FEATURE_NAMES[0]!r}"
    ) in refused.value.message()


def _fatal_signal_lines(log) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if line.startswith("Signal (")]


async def _drained(client: PredictClient, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while client.abandoned_in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return client.abandoned_in_flight == 0


async def test_calls_cancelled_in_flight_are_abandoned_and_triton_keeps_serving(client, running_triton):
    # A hedge's losing attempt is cancelled while Triton serves it. tritonserver 2.51 can crash when an
    # RPC it serves is cancelled (10 % of calls cancelled 0-2 ms in crashed a lone server within seconds
    # here), so the client abandons the RPC instead of cancelling it.
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(64, len(FEATURE_NAMES))).astype(np.float32)
    cancelled = answered = 0

    async def caller(worker: int) -> None:
        nonlocal cancelled, answered
        for i in range(250):
            call = asyncio.ensure_future(client.predict(rows[(worker + i) % 64][None, :], timeout_s=5))
            if (worker + i) % 4 == 0:
                await asyncio.sleep(float(rng.uniform(0, 0.002)))
                call.cancel()
            try:
                await call
                answered += 1
            except asyncio.CancelledError:
                cancelled += 1

    await asyncio.gather(*(caller(worker) for worker in range(8)))

    assert cancelled > 100 and answered + cancelled == 2000
    assert await _drained(client, timeout_s=5), f"{client.abandoned_in_flight} abandoned RPCs never ended"
    assert _fatal_signal_lines(running_triton.log) == []
    assert len((await client.predict(rows[:3], timeout_s=5)).scores) == 3


async def test_a_call_past_its_timeout_fails_at_once_and_its_rpc_runs_out(client, running_triton):
    # A batch big enough that Triton takes far longer than the caller's timeout.
    rows = np.random.default_rng(8).normal(size=(200_000, len(FEATURE_NAMES))).astype(np.float32)

    with pytest.raises(PredictTimeout, match="no answer within 1 ms"):
        await client.predict(rows, timeout_s=0.001)

    assert client.abandoned_in_flight == 1
    assert await _drained(client, timeout_s=10)
    assert _fatal_signal_lines(running_triton.log) == []
