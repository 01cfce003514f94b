"""GatewayService over gRPC: the caller's deadline and trace context in, the encoded assessment out."""

import grpc
from opentelemetry import trace
from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.codec import encode_score_response
from services.gateway.graph import ScoreGraph
from services.runtime import metrics
from services.runtime.server import ServiceRegistration


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, graph: ScoreGraph) -> None:
        self._graph = graph

    async def Score(
        self, request: gateway_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ScoreResponse:
        # The server span (runtime TelemetryInterceptor, child of the caller's trace context) is current.
        assessment = await self._graph.score(request, budget_s=context.time_remaining())
        trace.get_current_span().set_attributes(
            {
                "scoregraph.model_name": assessment.model_name,
                "scoregraph.model_version": assessment.model_version,
                "scoregraph.verdict": assessment.verdict.name,
                "scoregraph.degraded": assessment.degraded,
            }
        )
        metrics.VERDICTS.labels(
            assessment.model_name, assessment.model_version, assessment.verdict.name, str(assessment.degraded)
        ).inc()
        return encode_score_response(assessment)


def gateway_registration(graph: ScoreGraph) -> ServiceRegistration:
    return ServiceRegistration(
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
        GatewayServicer(graph),
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
    )
