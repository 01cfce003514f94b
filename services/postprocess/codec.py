"""Translation between the postprocess protos and the label policy's types; requests are validated here."""

import math

import grpc
import numpy as np
from scoregraph.postprocess.v1 import postprocess_pb2

from services.postprocess.policy import (
    FailedHop,
    FeatureSummary,
    Hop,
    Label,
    LabelDecision,
    ModelVersion,
    ScoringOutcome,
)
from services.runtime.errors import FieldViolation, InvalidInput

_HOPS = {hop.value: hop for hop in Hop}
# OK is a status, not a failure.
_FAILURE_CODES = frozenset(code.name for code in grpc.StatusCode) - {grpc.StatusCode.OK.name}

_LABELS = {
    Label.NOT_FRAUD: postprocess_pb2.LABEL_NOT_FRAUD,
    Label.SUSPICIOUS: postprocess_pb2.LABEL_SUSPICIOUS,
    Label.HIGHLY_SUSPICIOUS: postprocess_pb2.LABEL_HIGHLY_SUSPICIOUS,
    Label.UNCERTAIN: postprocess_pb2.LABEL_UNCERTAIN,
}


def outcome_from_request(request: postprocess_pb2.LabelRequest) -> ScoringOutcome:
    """The request as a ScoringOutcome; raises InvalidInput naming every field that is wrong."""
    violations: list[FieldViolation] = []
    score = _score(request, violations)
    model = _model(request, score is not None, violations)
    features = _features(request, violations)
    failed_hops = _failed_hops(request, violations)
    if violations:
        raise InvalidInput(violations)
    return ScoringOutcome(model, score, features, failed_hops)


def response_from_decision(decision: LabelDecision) -> postprocess_pb2.LabelResponse:
    return postprocess_pb2.LabelResponse(
        label=_LABELS[decision.label],
        reasons=[
            postprocess_pb2.Reason(code=reason.code, description=reason.description)
            for reason in decision.reasons
        ],
        policy_version=decision.policy_version,
    )


def _score(request: postprocess_pb2.LabelRequest, violations: list[FieldViolation]) -> float | None:
    if not request.HasField("score"):
        return None
    if math.isnan(request.score) or not 0.0 <= request.score <= 1.0:
        violations.append(FieldViolation("score", "must be a number in [0, 1]"))
        return None
    # The wire carries a float32, and float32(0.7) is 0.699999988: compared as it arrives, a score of 0.7
    # would fall below a 0.70 threshold. The shortest decimal that is the same float32 is the score meant.
    return float(str(np.float32(request.score)))


def _model(
    request: postprocess_pb2.LabelRequest, scored: bool, violations: list[FieldViolation]
) -> ModelVersion | None:
    if request.model_name and request.model_version:
        return ModelVersion(request.model_name, request.model_version)
    if scored:
        # Without them no policy can be chosen for the score.
        for field in ("model_name", "model_version"):
            if not getattr(request, field):
                violations.append(FieldViolation(field, "is required when score is set"))
    return None


def _features(
    request: postprocess_pb2.LabelRequest, violations: list[FieldViolation]
) -> FeatureSummary | None:
    if not request.HasField("feature_summary"):
        return None
    summary = request.feature_summary
    if summary.present_count < 0:
        violations.append(FieldViolation("feature_summary.present_count", "must not be negative"))
    for count_field, names_field in (
        ("missing_count", "missing_features"),
        ("stale_count", "stale_features"),
    ):
        count, names = getattr(summary, count_field), getattr(summary, names_field)
        if count < 0:
            violations.append(FieldViolation(f"feature_summary.{count_field}", "must not be negative"))
        elif count != len(names):
            violations.append(
                FieldViolation(
                    f"feature_summary.{count_field}",
                    f"must equal the number of feature_summary.{names_field} ({len(names)})",
                )
            )
        violations.extend(
            FieldViolation(f"feature_summary.{names_field}[{index}]", "must not be empty")
            for index, name in enumerate(names)
            if not name
        )
    return FeatureSummary(
        summary.present_count, tuple(summary.missing_features), tuple(summary.stale_features)
    )


def _failed_hops(
    request: postprocess_pb2.LabelRequest, violations: list[FieldViolation]
) -> tuple[FailedHop, ...]:
    failed_hops = []
    for index, failed in enumerate(request.failed_hops):
        hop = _HOPS.get(failed.hop)
        if hop is None:
            violations.append(
                FieldViolation(f"failed_hops[{index}].hop", f"must be one of {', '.join(_HOPS)}")
            )
        if failed.status_code not in _FAILURE_CODES:
            violations.append(
                FieldViolation(
                    f"failed_hops[{index}].status_code",
                    "must be the name of a gRPC status code other than OK, e.g. UNAVAILABLE",
                )
            )
        elif hop is not None:
            failed_hops.append(FailedHop(hop, failed.status_code))
    return tuple(failed_hops)
