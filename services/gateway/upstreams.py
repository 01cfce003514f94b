"""Connections to the gateway's upstreams: a client per replica, so a call can choose (and avoid) replicas."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from scoregraph.features.v1 import features_pb2_grpc
from scoregraph.postprocess.v1 import postprocess_pb2_grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from services.gateway.settings import GatewaySettings
from services.predict.client import (
    ModelUnavailable,
    PredictClient,
    PredictError,
    PredictTimeout,
    ServedModel,
)
from services.runtime.resilience import REPLICA_CHANNEL_OPTIONS, Replica, ReplicaSet

log = structlog.get_logger(__name__)

# Per attempt while waiting for Triton: a replica that is up answers its model config in milliseconds.
_CONTRACT_READ_TIMEOUT_S = 5.0


def replica_channel(address: str) -> grpc.aio.Channel:
    """The channel to one replica (`host:port`)."""
    return grpc.aio.insecure_channel(f"dns:///{address}", options=REPLICA_CHANNEL_OPTIONS)


class TritonReplicas:
    """The model on every Triton replica, one PredictClient each.

    All replicas must serve the same model version under the same feature contract: features are put
    in the contract's order once, for whichever replica gets the call.
    """

    def __init__(self, clients: Sequence[PredictClient], addresses: Sequence[str] | None = None) -> None:
        if not clients:
            raise ValueError("at least one Triton replica is required")
        self.clients = tuple(clients)
        self.addresses = tuple(addresses or (f"triton-{i}" for i in range(len(clients))))

    @classmethod
    def connect(cls, addresses: Sequence[str], model_name: str) -> "TritonReplicas":
        return cls([PredictClient(address, model_name) for address in addresses], addresses)

    async def load_contract(self, *, timeout_s: float) -> ServedModel:
        """The served model and its feature contract, waiting up to `timeout_s` for every replica to
        serve it."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            retry=retry_if_exception_type((ModelUnavailable, PredictTimeout)),
            before_sleep=_log_waiting,
            reraise=True,
        ):
            with attempt:
                served = await asyncio.gather(
                    *(client.load_contract(timeout_s=_CONTRACT_READ_TIMEOUT_S) for client in self.clients)
                )
        if len(set(served)) > 1:
            raise PredictError(f"Triton replicas serve different models or contracts: {served}")
        return served[0]

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))


@dataclass
class Upstreams:
    """Every replica of every hop the gateway calls."""

    features: ReplicaSet[features_pb2_grpc.FeaturesServiceStub]
    triton: TritonReplicas
    predict: ReplicaSet[PredictClient]
    postprocess: ReplicaSet[postprocess_pb2_grpc.PostprocessServiceStub]
    channels: tuple[grpc.aio.Channel, ...]

    @classmethod
    def connect(cls, settings: GatewaySettings) -> "Upstreams":
        ejection_s = settings.replica_ejection_ms / 1000
        channels: list[grpc.aio.Channel] = []

        def replicas(addresses: Sequence[str], stub: type) -> ReplicaSet:
            members = []
            for address in addresses:
                channels.append(replica_channel(address))
                members.append(Replica(address, stub(channels[-1])))
            return ReplicaSet(members, ejection_s=ejection_s)

        triton = TritonReplicas.connect(settings.triton_addresses, settings.model_name)
        return cls(
            features=replicas(settings.features_addresses, features_pb2_grpc.FeaturesServiceStub),
            triton=triton,
            predict=ReplicaSet(
                [Replica(a, c) for a, c in zip(triton.addresses, triton.clients, strict=True)],
                ejection_s=ejection_s,
            ),
            postprocess=replicas(settings.postprocess_addresses, postprocess_pb2_grpc.PostprocessServiceStub),
            channels=tuple(channels),
        )

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels), self.triton.close())


def _log_waiting(state: RetryCallState) -> None:
    log.info("waiting for the model", attempt=state.attempt_number, error=str(state.outcome.exception()))
