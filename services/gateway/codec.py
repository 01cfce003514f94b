"""Conversions between the gateway's domain (assessment.py) and the protobuf messages of its APIs."""

from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2

from services.gateway.assessment import Assessment, Reason, Verdict

_VERDICTS_BY_LABEL = {
    postprocess_pb2.LABEL_NOT_FRAUD: Verdict.NOT_FRAUD,
    postprocess_pb2.LABEL_SUSPICIOUS: Verdict.SUSPICIOUS,
    postprocess_pb2.LABEL_HIGHLY_SUSPICIOUS: Verdict.HIGHLY_SUSPICIOUS,
    postprocess_pb2.LABEL_UNCERTAIN: Verdict.UNCERTAIN,
}

_PROTO_VERDICTS = {
    Verdict.NOT_FRAUD: gateway_pb2.VERDICT_NOT_FRAUD,
    Verdict.SUSPICIOUS: gateway_pb2.VERDICT_SUSPICIOUS,
    Verdict.HIGHLY_SUSPICIOUS: gateway_pb2.VERDICT_HIGHLY_SUSPICIOUS,
    Verdict.UNCERTAIN: gateway_pb2.VERDICT_UNCERTAIN,
}


class UnknownLabel(ValueError):
    """The label policy answered with a label this gateway cannot map to a verdict."""


def decode_label(response: postprocess_pb2.LabelResponse) -> tuple[Verdict, tuple[Reason, ...]]:
    """The verdict and reasons of a label policy's answer."""
    try:
        verdict = _VERDICTS_BY_LABEL[response.label]
    except KeyError:
        raise UnknownLabel(f"label {response.label} has no verdict") from None
    return verdict, tuple(Reason(reason.code, reason.description) for reason in response.reasons)


def encode_score_response(assessment: Assessment) -> gateway_pb2.ScoreResponse:
    return gateway_pb2.ScoreResponse(
        transaction_id=assessment.transaction_id,
        verdict=_PROTO_VERDICTS[assessment.verdict],
        score=assessment.score,
        model_name=assessment.model_name,
        model_version=assessment.model_version,
        reasons=[
            gateway_pb2.Reason(code=reason.code, description=reason.description)
            for reason in assessment.reasons
        ],
        degraded=assessment.degraded,
        trace_id=assessment.trace_id,
    )
