"""The gRPC face of the postprocess service: decode, let the label policy decide, encode."""

import grpc
import structlog
from opentelemetry import trace
from scoregraph.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc

from services.postprocess.codec import outcome_from_request, response_from_decision
from services.postprocess.policy import PolicyCatalogue
from services.runtime.server import ServiceRegistration

log = structlog.get_logger(__name__)


class PostprocessServicer(postprocess_pb2_grpc.PostprocessServiceServicer):
    def __init__(self, policies: PolicyCatalogue) -> None:
        self._policies = policies

    async def Label(
        self, request: postprocess_pb2.LabelRequest, context: grpc.aio.ServicerContext
    ) -> postprocess_pb2.LabelResponse:
        outcome = outcome_from_request(request)
        decision = self._policies.decide(outcome)
        trace.get_current_span().set_attributes(
            {
                "scoregraph.model_name": outcome.model.name if outcome.model else "",
                "scoregraph.model_version": outcome.model.version if outcome.model else "",
                "scoregraph.label": decision.label.name,
                "scoregraph.policy_version": decision.policy_version,
            }
        )
        log.info(
            "labelled",
            model=outcome.model.name if outcome.model else None,
            model_version=outcome.model.version if outcome.model else None,
            label=decision.label.name,
            reasons=[reason.code for reason in decision.reasons],
            policy_version=decision.policy_version,
        )
        return response_from_decision(decision)


def postprocess_registration(policies: PolicyCatalogue) -> ServiceRegistration:
    return ServiceRegistration(
        postprocess_pb2.DESCRIPTOR.services_by_name["PostprocessService"],
        PostprocessServicer(policies),
        postprocess_pb2_grpc.add_PostprocessServiceServicer_to_server,
    )
