"""Connections to the gateway's upstreams, each spread over all of its replicas."""

import asyncio
import ipaddress
import itertools
import json
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from services.predict.client import (
    ModelUnavailable,
    PredictClient,
    PredictError,
    PredictResult,
    PredictTimeout,
    ServedModel,
)

log = structlog.get_logger(__name__)

_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

# Per attempt while waiting for Triton: a replica that is up answers its model config in milliseconds.
_CONTRACT_READ_TIMEOUT_S = 5.0


def channel_target(addresses: Sequence[str]) -> str:
    """The gRPC target that resolves to every address of `addresses`.

    A list of IP addresses becomes a static `ipv4:`/`ipv6:` target. One host name goes through DNS, which
    may resolve it to all replicas (a Kubernetes headless service). Several host names have no target
    that names them all.
    """
    hosts = [address.rpartition(":")[0] for address in addresses]
    try:
        versions = {ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).version for host in hosts}
    except ValueError:
        if len(addresses) == 1:
            return f"dns:///{addresses[0]}"
        raise ValueError(
            f"replica list {','.join(addresses)} mixes host names with other addresses; list IP "
            "addresses, or give one DNS name that resolves to all replicas"
        ) from None
    if len(versions) > 1:
        raise ValueError(f"replica list {','.join(addresses)} mixes IPv4 and IPv6 addresses")
    return f"ipv{versions.pop()}:{','.join(addresses)}"


def upstream_channel(addresses: Sequence[str]) -> grpc.aio.Channel:
    """One channel over all replicas of an upstream, balancing calls round robin among the ready ones."""
    return grpc.aio.insecure_channel(
        channel_target(addresses), options=[("grpc.service_config", _ROUND_ROBIN)]
    )


class TritonReplicas:
    """The model on every Triton replica, one PredictClient each, called in turn.

    All replicas must serve the same model version under the same feature contract: features are put
    in the contract's order once, for whichever replica gets the call.
    """

    def __init__(self, clients: Sequence[PredictClient]) -> None:
        if not clients:
            raise ValueError("at least one Triton replica is required")
        self._clients = tuple(clients)
        self._turns = itertools.cycle(self._clients)

    @classmethod
    def connect(cls, addresses: Sequence[str], model_name: str) -> "TritonReplicas":
        return cls([PredictClient(address, model_name) for address in addresses])

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
                    *(client.load_contract(timeout_s=_CONTRACT_READ_TIMEOUT_S) for client in self._clients)
                )
        if len(set(served)) > 1:
            raise PredictError(f"Triton replicas serve different models or contracts: {served}")
        return served[0]

    async def predict(
        self, features: np.ndarray, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> PredictResult:
        return await next(self._turns).predict(features, timeout_s=timeout_s, headers=headers)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients))


def _log_waiting(state: RetryCallState) -> None:
    log.info("waiting for the model", attempt=state.attempt_number, error=str(state.outcome.exception()))
