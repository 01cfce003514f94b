import asyncio
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from scoregraph.features.v1 import features_pb2, features_pb2_grpc

from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import TritonReplicas, Upstreams, replica_channel
from services.predict.client import ModelUnavailable, PredictError, PredictResult, ServedModel
from services.predict.contract import FeatureContract
from tests.gateway.upstream_fakes import SERVED_MODEL, ScriptedFeatures


async def test_upstreams_have_a_client_per_replica_of_every_hop() -> None:
    settings = GatewaySettings(
        features_addresses="127.0.0.1:1,127.0.0.1:2",
        postprocess_addresses="postprocess-0.scoring:50071,postprocess-1.scoring:50071",
        triton_addresses="127.0.0.1:3,127.0.0.1:4",
    )
    upstreams = Upstreams.connect(settings)
    try:
        assert [r.address for r in upstreams.features.replicas] == ["127.0.0.1:1", "127.0.0.1:2"]
        assert len({id(r.client) for r in upstreams.features.replicas}) == 2
        assert len(upstreams.postprocess) == 2
        assert [r.address for r in upstreams.predict.replicas] == ["127.0.0.1:3", "127.0.0.1:4"]
        assert len(upstreams.channels) == 4
    finally:
        await upstreams.close()


async def test_a_replica_channel_reaches_its_replica() -> None:
    replica = ScriptedFeatures()
    server = grpc.aio.server()
    features_pb2_grpc.add_FeaturesServiceServicer_to_server(replica, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = replica_channel(f"127.0.0.1:{port}")
    try:
        stub = features_pb2_grpc.FeaturesServiceStub(channel)
        await stub.GetFeatures(features_pb2.GetFeaturesRequest(feature_service="f"), timeout=5)
    finally:
        await channel.close()
        await server.stop(None)

    assert len(replica.calls) == 1


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
