import pytest
from scoregraph.postprocess.v1 import postprocess_pb2

from services.postprocess.codec import outcome_from_request, response_from_decision
from services.postprocess.policy import (
    FailedHop,
    FeatureSummary,
    Hop,
    Label,
    LabelDecision,
    ModelVersion,
    Reason,
    ScoringOutcome,
)
from services.runtime.errors import FieldViolation, InvalidInput


def request(**fields) -> postprocess_pb2.LabelRequest:
    return postprocess_pb2.LabelRequest(**{"model_name": "fraud_mlp", "model_version": "1", **fields})


def test_request_becomes_an_outcome() -> None:
    message = request(
        score=0.5,
        feature_summary=postprocess_pb2.FeatureSummary(
            present_count=17,
            missing_count=2,
            stale_count=1,
            missing_features=["txn_count_1h", "device_txn_count"],
            stale_features=["avg_amount_30d"],
        ),
        failed_hops=[postprocess_pb2.FailedHop(hop="features", status_code="DEADLINE_EXCEEDED")],
    )

    assert outcome_from_request(message) == ScoringOutcome(
        ModelVersion("fraud_mlp", "1"),
        0.5,
        FeatureSummary(17, ("txn_count_1h", "device_txn_count"), ("avg_amount_30d",)),
        (FailedHop(Hop.FEATURES, "DEADLINE_EXCEEDED"),),
    )


def test_score_is_read_as_the_decimal_the_float32_stands_for() -> None:
    # float32(0.7) is 0.69999998...; read as it arrives, it would fall below a 0.70 threshold.
    assert outcome_from_request(request(score=0.7)).score == 0.7


def test_unset_score_and_features_stay_unset() -> None:
    outcome = outcome_from_request(
        postprocess_pb2.LabelRequest(
            failed_hops=[postprocess_pb2.FailedHop(hop="predict", status_code="UNAVAILABLE")]
        )
    )

    assert outcome == ScoringOutcome(None, None, None, (FailedHop(Hop.PREDICT, "UNAVAILABLE"),))


def test_a_zero_score_is_a_score() -> None:
    assert outcome_from_request(request(score=0.0)).score == 0.0


def summary(**fields) -> postprocess_pb2.FeatureSummary:
    return postprocess_pb2.FeatureSummary(**{"present_count": 20, **fields})


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (request(score=1.5), "score"),
        (request(score=-0.1), "score"),
        (request(score=float("nan")), "score"),
        (request(score=float("inf")), "score"),
        (request(score=0.5, model_name=""), "model_name"),
        (request(score=0.5, model_version=""), "model_version"),
        (request(feature_summary=summary(present_count=-1)), "feature_summary.present_count"),
        (request(feature_summary=summary(missing_count=-1)), "feature_summary.missing_count"),
        (
            request(feature_summary=summary(missing_count=2, missing_features=["a"])),
            "feature_summary.missing_count",
        ),
        (request(feature_summary=summary(stale_features=["a"])), "feature_summary.stale_count"),
        (
            request(feature_summary=summary(stale_count=1, stale_features=[""])),
            "feature_summary.stale_features[0]",
        ),
        (request(failed_hops=[{"hop": "triton", "status_code": "UNAVAILABLE"}]), "failed_hops[0].hop"),
        (request(failed_hops=[{"hop": "Features", "status_code": "UNAVAILABLE"}]), "failed_hops[0].hop"),
        (
            request(failed_hops=[{"hop": "features", "status_code": "UNAVAILABLE"}, {"hop": "predict"}]),
            "failed_hops[1].status_code",
        ),
        (request(failed_hops=[{"hop": "predict", "status_code": "OK"}]), "failed_hops[0].status_code"),
        (request(failed_hops=[{"hop": "predict", "status_code": "timeout"}]), "failed_hops[0].status_code"),
    ],
)
def test_invalid_request_names_the_field(message: postprocess_pb2.LabelRequest, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        outcome_from_request(message)

    assert [violation.field for violation in raised.value.violations] == [field]


def test_every_violation_is_reported_at_once() -> None:
    message = request(
        score=2.0,
        feature_summary=summary(missing_count=1),
        failed_hops=[{"hop": "triton", "status_code": "UNAVAILABLE"}],
    )

    with pytest.raises(InvalidInput) as raised:
        outcome_from_request(message)

    assert raised.value.violations == [
        FieldViolation("score", "must be a number in [0, 1]"),
        FieldViolation(
            "feature_summary.missing_count", "must equal the number of feature_summary.missing_features (0)"
        ),
        FieldViolation("failed_hops[0].hop", "must be one of features, predict"),
    ]


@pytest.mark.parametrize(
    ("label", "wire"),
    [
        (Label.NOT_FRAUD, postprocess_pb2.LABEL_NOT_FRAUD),
        (Label.SUSPICIOUS, postprocess_pb2.LABEL_SUSPICIOUS),
        (Label.HIGHLY_SUSPICIOUS, postprocess_pb2.LABEL_HIGHLY_SUSPICIOUS),
        (Label.UNCERTAIN, postprocess_pb2.LABEL_UNCERTAIN),
    ],
)
def test_decision_becomes_a_response(label: Label, wire: int) -> None:
    decision = LabelDecision(label, (Reason("A", "first"), Reason("B", "second")), "p.1")

    assert response_from_decision(decision) == postprocess_pb2.LabelResponse(
        label=wire,
        reasons=[
            postprocess_pb2.Reason(code="A", description="first"),
            postprocess_pb2.Reason(code="B", description="second"),
        ],
        policy_version="p.1",
    )
