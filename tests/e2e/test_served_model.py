"""The model `make build` trained, as the stack's tritonserver serves it, against onnxruntime in process."""

import asyncio

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tritonclient.grpc

from services.features.feature_service import contract_of, historical_matrix, open_store
from services.predict.client import PredictClient
from services.predict.repository import CPU_REPOSITORY
from services.runtime.settings import host_port
from services.stack.topology import REPO, triton_grpc_ports

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# The same onnxruntime build runs the same graph on both sides; dynamic batching may change the kernels'
# batch shapes, which moves float32 results by a few ulps at most.
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def labelled_rows() -> tuple[np.ndarray, np.ndarray]:
    """Real training rows (point-in-time features, NaN where missing), fraud and legitimate."""
    tx = pd.read_parquet(REPO / "data" / "features" / "transactions.parquet")
    sample = pd.concat(
        [tx[tx["is_fraud"]].sample(40, random_state=5), tx[~tx["is_fraud"]].sample(200, random_state=5)]
    )
    store = open_store()
    matrix = historical_matrix(store, sample, contract_of(store, "fraud_model_v1"))
    return matrix.to_numpy(dtype=np.float32), sample["is_fraud"].to_numpy()


async def test_triton_scores_the_trained_model_as_onnxruntime_does(stack, labelled_rows):
    features, is_fraud = labelled_rows
    assert np.isnan(features).any(), "the sample should include missing features (first transactions)"
    session = ort.InferenceSession(str(CPU_REPOSITORY / "fraud_mlp" / "1" / "model.onnx"))
    expected = session.run(["score"], {"features": features})[0][:, 0]

    async with PredictClient(f"{stack.settings.host}:{stack.settings.triton_port}", "fraud_mlp") as client:
        served = await client.load_contract(timeout_s=10)
        assert served.contract == contract_of(open_store(), "fraud_model_v1")
        rows = np.array_split(features, 12)
        results = await asyncio.gather(*(client.predict(batch, timeout_s=10) for batch in rows))

    scores = np.concatenate([r.scores for r in results])
    np.testing.assert_allclose(scores, expected, atol=SCORE_ATOL, rtol=0)
    # And it is the model the card describes, not any model: fraud scores far above legitimate ones.
    assert np.median(scores[is_fraud]) > 0.5 > 0.01 > np.median(scores[~is_fraud])


def _requests_served(server: str) -> int:
    with tritonclient.grpc.InferenceServerClient(server) as client:
        [stats] = client.get_inference_statistics("fraud_mlp").model_stats
        return stats.inference_stats.success.count


async def _settled_counts(servers: list[str], timeout_s: float = 15.0) -> list[int]:
    """Each server's count of requests served, once no server has served one for half a second."""
    counts = [_requests_served(server) for server in servers]
    for _ in range(int(timeout_s / 0.5)):
        await asyncio.sleep(0.5)
        latest = [_requests_served(server) for server in servers]
        if latest == counts:
            return counts
        counts = latest
    raise AssertionError(f"the Triton servers never stopped serving other calls: {counts}")


async def test_an_address_naming_several_triton_servers_spreads_the_calls_over_all_of_them(
    stack, labelled_rows
):
    # As `triton:8001` in deploy/compose.yaml, one DNS name for two replicas: here a target that names both.
    servers = [host_port(stack.settings.host, port) for port in triton_grpc_ports(stack.settings)]
    assert len(servers) == 2
    # Calls an earlier test left in flight (a Triton call is never cancelled) must not count as these.
    before = await _settled_counts(servers)
    features, _ = labelled_rows
    async with PredictClient(f"ipv4:{','.join(servers)}", "fraud_mlp") as client:
        await client.load_contract(timeout_s=10)
        for row in features[:20]:
            await client.predict(row[np.newaxis], timeout_s=10)
    served = [_requests_served(server) - count for server, count in zip(servers, before, strict=True)]
    assert sum(served) == 20, f"calls per server: {served}"
    assert min(served) >= 5, f"calls per server: {served}"
