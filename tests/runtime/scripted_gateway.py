"""A GatewayService whose Score does whatever a test scripts, to exercise the runtime around a servicer."""

from collections.abc import Awaitable, Callable

from scoregraph.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.runtime.server import ServiceRegistration
from services.runtime.settings import ServiceSettings

GATEWAY_SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name

ScoreBehavior = Callable[[gateway_pb2.ScoreRequest], Awaitable[gateway_pb2.ScoreResponse]]


class ScriptedGateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, score: ScoreBehavior) -> None:
        self._score = score

    async def Score(self, request, context):
        return await self._score(request)


def gateway_registration(score: ScoreBehavior) -> ServiceRegistration:
    return ServiceRegistration(
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
        ScriptedGateway(score),
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
    )


def runtime_settings(**overrides) -> ServiceSettings:
    # Port 0 and no metrics endpoint by default, so tests never contend for fixed ports.
    return ServiceSettings(**{"port": 0, "metrics_port": 0, "grace_period_s": 5.0, **overrides})
