from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from scoregraph.features.v1 import features_pb2_grpc
from scoregraph.postprocess.v1 import postprocess_pb2_grpc

from services.gateway.graph import ScoreGraph
from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import replica_channel
from services.runtime.resilience import Replica, ReplicaSet
from tests.gateway.upstream_fakes import (
    SERVED_MODEL,
    ScriptedFeatures,
    ScriptedPostprocess,
    ScriptedPredictor,
)


@dataclass
class FakeUpstreams:
    features: ScriptedFeatures
    postprocess: ScriptedPostprocess
    predictor: ScriptedPredictor
    address: str
    features_stub: features_pb2_grpc.FeaturesServiceStub
    postprocess_stub: postprocess_pb2_grpc.PostprocessServiceStub

    def replicas(self) -> dict[str, ReplicaSet]:
        """One replica per hop, as ScoreGraph takes them."""
        return {
            "features": ReplicaSet([Replica(self.address, self.features_stub)]),
            "predictor": ReplicaSet([Replica("predictor", self.predictor)]),
            "postprocess": ReplicaSet([Replica(self.address, self.postprocess_stub)]),
        }


@pytest.fixture
async def upstreams() -> AsyncIterator[FakeUpstreams]:
    """Scripted features and postprocess services on a real gRPC server, and a scripted predictor: the
    gateway's calls go over real sockets, so timeouts, status codes and metadata behave as in production."""
    features, postprocess = ScriptedFeatures(), ScriptedPostprocess()
    server = grpc.aio.server()
    features_pb2_grpc.add_FeaturesServiceServicer_to_server(features, server)
    postprocess_pb2_grpc.add_PostprocessServiceServicer_to_server(postprocess, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    features_channel = replica_channel(address)
    postprocess_channel = replica_channel(address)
    yield FakeUpstreams(
        features,
        postprocess,
        ScriptedPredictor(),
        address,
        features_pb2_grpc.FeaturesServiceStub(features_channel),
        postprocess_pb2_grpc.PostprocessServiceStub(postprocess_channel),
    )
    await features_channel.close()
    await postprocess_channel.close()
    await server.stop(None)


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="session")
def tracer_provider(spans) -> TracerProvider:
    # Not the global provider: tests must not depend on process-wide tracing state.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


def gateway_settings(**overrides) -> GatewaySettings:
    # No fixed ports, so tests never contend for them.
    return GatewaySettings(**{"port": 0, "metrics_port": 0, "grace_period_s": 2.0, **overrides})


@pytest.fixture
def make_graph(upstreams, tracer_provider, spans) -> Iterator[Callable[..., ScoreGraph]]:
    """A ScoreGraph over the fakes; keyword arguments override GatewaySettings fields, `tracer` the tracer
    (one recording into `spans` by default)."""
    spans.clear()

    def make(*, tracer: trace.Tracer | None = None, **overrides) -> ScoreGraph:
        return ScoreGraph(
            gateway_settings(**overrides),
            **upstreams.replicas(),
            served_model=SERVED_MODEL,
            tracer=tracer or tracer_provider.get_tracer("tests.gateway"),
        )

    yield make
