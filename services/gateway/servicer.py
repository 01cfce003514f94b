"""GatewayService over gRPC: the caller's deadline and trace context in, the encoded assessment out."""

import grpc
from opentelemetry import propagate
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.codec import encode_score_response
from services.gateway.graph import ScoreGraph
from services.runtime.server import ServiceRegistration


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, graph: ScoreGraph) -> None:
        self._graph = graph

    async def Score(
        self, request: gateway_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ScoreResponse:
        # A caller that traces passes its context, so this call shows up inside the caller's trace.
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        assessment = await self._graph.score(request, budget_s=context.time_remaining(), parent=parent)
        return encode_score_response(assessment)


def gateway_registration(graph: ScoreGraph) -> ServiceRegistration:
    return ServiceRegistration(
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
        GatewayServicer(graph),
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
    )
