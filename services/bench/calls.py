"""The gRPC calls the contenders are driven with, one per API, each over a channel opened once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from scoregraph.features.v1 import features_pb2, features_pb2_grpc
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.bench.loadgen import Call
from services.predict.contract import INPUT_TENSOR, OUTPUT_TENSOR

#: Deadline of every benchmark call: far above any SLO, so a slow answer counts as slow, not as an error.
CALL_TIMEOUT_S = 5.0


Metadata = Callable[[], Sequence[tuple[str, str]]]
"""Makes the gRPC metadata of one call."""


@asynccontextmanager
async def _unary_call(
    address: str, stub_type: type, method: str, requests: list[Any], metadata: Metadata | None = None
) -> AsyncIterator[Call]:
    """`stub_type(channel).<method>` on `address`, call i sending requests[i] (cycling) with `metadata()`,
    over one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = getattr(stub_type(channel), method)

        async def call(i: int) -> Any:
            return await rpc(
                requests[i % len(requests)],
                timeout=CALL_TIMEOUT_S,
                metadata=metadata() if metadata is not None else None,
            )

        yield call


def score_call(
    address: str, requests: list[gateway_pb2.ScoreRequest], metadata: Metadata | None = None
) -> AsyncContextManager[Call]:
    """GatewayService.Score on `address` (the graph's gateway or the monolith)."""
    return _unary_call(address, gateway_pb2_grpc.GatewayServiceStub, "Score", requests, metadata)


def features_call(address: str, requests: list[features_pb2.GetFeaturesRequest]) -> AsyncContextManager[Call]:
    """FeaturesService.GetFeatures on one features replica, as the gateway calls it."""
    return _unary_call(address, features_pb2_grpc.FeaturesServiceStub, "GetFeatures", requests)


@asynccontextmanager
async def triton_call(address: str, vectors: np.ndarray) -> AsyncIterator[Call]:
    """KServe v2 ModelInfer straight to one Triton replica with tritonclient: the predict hop's floor."""
    client = triton.InferenceServerClient(address)
    try:

        async def call(i: int) -> object:
            tensor = triton.InferInput(INPUT_TENSOR, [1, vectors.shape[1]], "FP32")
            tensor.set_data_from_numpy(vectors[i % len(vectors)][None, :])
            return await client.infer(
                "fraud_mlp", [tensor], outputs=[triton.InferRequestedOutput(OUTPUT_TENSOR)]
            )

        yield call
    finally:
        await client.close()
