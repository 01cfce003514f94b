import asyncio
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from scoregraph.features.v1 import features_pb2, features_pb2_grpc

from services.gateway.upstreams import TritonReplicas, channel_target, upstream_channel
from services.predict.client import ModelUnavailable, PredictError, PredictResult, ServedModel
from services.predict.contract import FeatureContract
from tests.gateway.upstream_fakes import SERVED_MODEL, ScriptedFeatures


@pytest.mark.parametrize(
    ("addresses", "target"),
    [
        (["127.0.0.1:50061"], "ipv4:127.0.0.1:50061"),
        (["127.0.0.1:50061", "127.0.0.1:50062"], "ipv4:127.0.0.1:50061,127.0.0.1:50062"),
        (["[::1]:50061", "[2001:db8::1]:50061"], "ipv6:[::1]:50061,[2001:db8::1]:50061"),
        (["features.scoring.svc:50061"], "dns:///features.scoring.svc:50061"),
    ],
)
def test_channel_target_names_every_replica(addresses: list[str], target: str) -> None:
    assert channel_target(addresses) == target


@pytest.mark.parametrize(
    "addresses",
    [["features-0:50061", "features-1:50061"], ["127.0.0.1:1", "features:2"], ["127.0.0.1:1", "[::1]:1"]],
)
def test_channel_target_refuses_lists_no_target_can_name(addresses: list[str]) -> None:
    with pytest.raises(ValueError, match="replica list"):
        channel_target(addresses)


async def test_an_upstream_channel_spreads_calls_over_all_replicas() -> None:
    replicas = [ScriptedFeatures() for _ in range(2)]
    servers = []
    for replica in replicas:
        server = grpc.aio.server()
        features_pb2_grpc.add_FeaturesServiceServicer_to_server(replica, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append((server, port))
    channel = upstream_channel([f"127.0.0.1:{port}" for _, port in servers])
    try:
        stub = features_pb2_grpc.FeaturesServiceStub(channel)
        for _ in range(20):
            await stub.GetFeatures(features_pb2.GetFeaturesRequest(feature_service="f"), timeout=5)
    finally:
        await channel.close()
        for server, _ in servers:
            await server.stop(None)

    assert all(replica.calls for replica in replicas)
    assert sum(len(replica.calls) for replica in replicas) == 20


@dataclass
class FakeTriton:
    """Stands in for one replica's PredictClient."""

    served: ServedModel = SERVED_MODEL
    unavailable_for: int = 0
    """Contract reads that fail as if Triton were still loading the model."""
    predictions: int = 0
    contract_reads: list[float] = field(default_factory=list)

    async def load_contract(self, *, timeout_s: float) -> ServedModel:
        self.contract_reads.append(timeout_s)
        if len(self.contract_reads) <= self.unavailable_for:
            raise ModelUnavailable("fraud_mlp is loading")
        return self.served

    async def predict(self, features, *, timeout_s, headers=None) -> PredictResult:
        self.predictions += 1
        return PredictResult(np.zeros(len(features), dtype=np.float32), self.served.name, self.served.version)

    async def close(self) -> None:
        pass


async def test_triton_replicas_take_turns() -> None:
    clients = [FakeTriton(), FakeTriton()]
    replicas = TritonReplicas(clients)

    for _ in range(4):
        await replicas.predict(np.zeros((1, 3), dtype=np.float32), timeout_s=1)

    assert [client.predictions for client in clients] == [2, 2]


async def test_the_contract_load_waits_for_triton_to_serve_the_model() -> None:
    clients = [FakeTriton(unavailable_for=2), FakeTriton()]

    served = await TritonReplicas(clients).load_contract(timeout_s=10)

    assert served == SERVED_MODEL
    assert len(clients[0].contract_reads) == 3


async def test_the_contract_load_gives_up_after_its_timeout() -> None:
    clients = [FakeTriton(unavailable_for=1000)]

    with pytest.raises(ModelUnavailable):
        await asyncio.wait_for(TritonReplicas(clients).load_contract(timeout_s=0.5), timeout=5)


async def test_replicas_serving_different_contracts_are_refused() -> None:
    other = ServedModel("fraud_mlp", "3", FeatureContract("fraud_v1", ("txn_count_1h", "amount_eur")))

    with pytest.raises(PredictError, match="different models"):
        await TritonReplicas([FakeTriton(), FakeTriton(served=other)]).load_contract(timeout_s=1)
