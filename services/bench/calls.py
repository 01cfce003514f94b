"""The gRPC calls the contenders are driven with, one per API, each over a channel opened once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from scoregraph.features.v1 import features_pb2, features_pb2_grpc
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.bench.loadgen import Call
from services.predict.contract import INPUT_TENSOR, OUTPUT_TENSOR

#: Deadline of every benchmark call: far above any SLO, so a slow answer counts as slow, not as an error.
CALL_TIMEOUT_S = 5.0


@asynccontextmanager
async def score_call(address: str, requests: list[gateway_pb2.ScoreRequest]) -> AsyncIterator[Call]:
    """GatewayService.Score on `address` (the graph's gateway or the monolith)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def call(i: int) -> gateway_pb2.ScoreResponse:
            return await stub.Score(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)

        yield call


@asynccontextmanager
async def features_call(address: str, requests: list[features_pb2.GetFeaturesRequest]) -> AsyncIterator[Call]:
    """FeaturesService.GetFeatures on one features replica, as the gateway calls it."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = features_pb2_grpc.FeaturesServiceStub(channel)

        async def call(i: int) -> features_pb2.GetFeaturesResponse:
            return await stub.GetFeatures(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)

        yield call


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
