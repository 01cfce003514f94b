import pytest

from services.postprocess.policy import (
    FailedHop,
    FeatureSummary,
    Hop,
    Label,
    LabelDecision,
    ModelVersion,
    PolicyCatalogue,
    Reason,
    ScoringOutcome,
)
from tests.postprocess.conftest import CARD_ACTIVITY, DEVICE, MERCHANT_RISK, MODEL_WIDTH, label_policy

FRAUD_MLP_1 = ModelVersion("fraud_mlp", "1")
ALL_PRESENT = FeatureSummary(MODEL_WIDTH, (), ())
NEW_CARD = Reason("NEW_CARD", "no history for this card")
NEW_DEVICE = Reason("NEW_DEVICE", "first time this card is used on this device")


def missing(*names: str) -> FeatureSummary:
    return FeatureSummary(MODEL_WIDTH - len(names), names, ())


def stale(*names: str) -> FeatureSummary:
    return FeatureSummary(MODEL_WIDTH - len(names), (), names)


def scored(score: float, features: FeatureSummary | None = ALL_PRESENT, **policy) -> LabelDecision:
    return label_policy(**policy).decide(ScoringOutcome(FRAUD_MLP_1, score, features))


def codes(decision: LabelDecision) -> list[str]:
    return [reason.code for reason in decision.reasons]


@pytest.mark.parametrize(
    ("score", "label", "code"),
    [
        (0.0, Label.NOT_FRAUD, "SCORE_BELOW_THRESHOLD"),
        (0.1999, Label.NOT_FRAUD, "SCORE_BELOW_THRESHOLD"),
        (0.2, Label.SUSPICIOUS, "SCORE_ABOVE_THRESHOLD"),
        (0.6999, Label.SUSPICIOUS, "SCORE_ABOVE_THRESHOLD"),
        (0.7, Label.HIGHLY_SUSPICIOUS, "SCORE_ABOVE_HIGH_THRESHOLD"),
        (1.0, Label.HIGHLY_SUSPICIOUS, "SCORE_ABOVE_HIGH_THRESHOLD"),
    ],
)
def test_thresholds_are_inclusive_lower_bounds(score: float, label: Label, code: str) -> None:
    decision = scored(score)

    assert decision.label is label
    assert codes(decision) == [code]
    assert decision.policy_version == "test.1"


@pytest.mark.parametrize(
    ("score", "description"),
    [
        (0.93, "score 0.93 >= 0.70"),
        (0.45, "score 0.45 >= 0.20 and < 0.70"),
        (0.0000021, "score 0.00 < 0.20"),
        # Rounded to 0.70 it would read as reaching the threshold it is below.
        (0.699999, "score 0.6999 >= 0.20 and < 0.70"),
    ],
)
def test_score_reason_shows_the_score_against_the_threshold(score: float, description: str) -> None:
    assert scored(score).reasons[0].description == description


UNCERTAIN_BAND = {"lower": 0.2, "upper": 0.3, "why": "unreliable on card-not-present traffic"}


@pytest.mark.parametrize(
    ("score", "label"),
    [
        (0.1999, Label.NOT_FRAUD),
        (0.2, Label.UNCERTAIN),
        (0.2999, Label.UNCERTAIN),
        (0.3, Label.SUSPICIOUS),
    ],
)
def test_uncertain_band_overrides_the_thresholds_from_lower_up_to_upper(score: float, label: Label) -> None:
    assert scored(score, uncertain_band=UNCERTAIN_BAND).label is label


def test_uncertain_band_reason_says_why() -> None:
    decision = scored(0.25, uncertain_band=UNCERTAIN_BAND)

    assert decision.reasons == (
        Reason(
            "SCORE_IN_UNCERTAIN_BAND", "score 0.25 in [0.20, 0.30): unreliable on card-not-present traffic"
        ),
    )


def test_failed_hops_are_named_in_call_order() -> None:
    outcome = ScoringOutcome(
        None,
        None,
        None,
        (FailedHop(Hop.FEATURES, "DEADLINE_EXCEEDED"), FailedHop(Hop.PREDICT, "UNAVAILABLE")),
    )

    decision = label_policy().decide(outcome)

    assert decision.label is Label.UNCERTAIN
    assert decision.reasons == (
        Reason("FEATURES_FAILED", "features hop failed with DEADLINE_EXCEEDED"),
        Reason("PREDICT_FAILED", "predict hop failed with UNAVAILABLE"),
    )


def test_predict_failure_still_flags_the_features_read() -> None:
    outcome = ScoringOutcome(None, None, missing(DEVICE), (FailedHop(Hop.PREDICT, "UNAVAILABLE"),))

    decision = label_policy().decide(outcome)

    assert decision.label is Label.UNCERTAIN
    assert codes(decision) == ["PREDICT_FAILED", "NEW_DEVICE"]


def test_a_failed_hop_overrides_a_score_but_keeps_it_as_a_reason() -> None:
    outcome = ScoringOutcome(FRAUD_MLP_1, 0.93, None, (FailedHop(Hop.FEATURES, "UNAVAILABLE"),))

    decision = label_policy().decide(outcome)

    assert decision.label is Label.UNCERTAIN
    assert codes(decision) == ["FEATURES_FAILED", "SCORE_ABOVE_HIGH_THRESHOLD"]


def test_no_score_without_a_failed_hop_is_uncertain() -> None:
    decision = label_policy().decide(ScoringOutcome(None, None, ALL_PRESENT))

    assert decision.label is Label.UNCERTAIN
    assert codes(decision) == ["NO_SCORE"]


def test_a_new_card_on_a_new_device_is_scored_and_explained() -> None:
    decision = scored(0.45, missing(*CARD_ACTIVITY, DEVICE))

    assert decision.label is Label.SUSPICIOUS
    assert decision.reasons[1:] == (NEW_CARD, NEW_DEVICE)


def test_a_new_device_alone_does_not_make_the_label_uncertain() -> None:
    decision = scored(0.01, missing(DEVICE))

    assert decision.label is Label.NOT_FRAUD
    assert decision.reasons[1:] == (NEW_DEVICE,)


def test_more_missing_features_than_the_max_count_make_the_label_uncertain() -> None:
    decision = scored(0.93, missing(*CARD_ACTIVITY, *MERCHANT_RISK, DEVICE))

    assert decision.label is Label.UNCERTAIN
    assert codes(decision) == [
        "TOO_MANY_MISSING_FEATURES",
        "SCORE_ABOVE_HIGH_THRESHOLD",
        "NEW_CARD",
        "NEW_DEVICE",
        "FEATURES_MISSING",
    ]
    assert decision.reasons[0].description == "missing: 11 of 20 features, more than the 9 allowed"
    assert decision.reasons[-1].description == "missing: merchant_fraud_rate_30d, merchant_txn_count_30d"


@pytest.mark.parametrize(("missing_count", "label"), [(5, Label.NOT_FRAUD), (6, Label.UNCERTAIN)])
def test_missing_share_limit(missing_count: int, label: Label) -> None:
    decision = scored(0.01, missing(*CARD_ACTIVITY[:missing_count]), missing_features={"max_share": 0.25})

    assert decision.label is label


def test_share_limit_is_described_as_a_share() -> None:
    decision = scored(0.01, missing(*CARD_ACTIVITY[:6]), missing_features={"max_share": 0.25})

    assert decision.reasons[0] == Reason(
        "TOO_MANY_MISSING_FEATURES", "missing: 6 of 20 features, more than the 25% allowed"
    )


def test_part_of_a_group_missing_is_listed_by_name() -> None:
    decision = scored(0.01, missing("txn_count_1h", "txn_amount_1h"))

    assert decision.reasons[1:] == (Reason("FEATURES_MISSING", "missing: txn_count_1h, txn_amount_1h"),)


@pytest.mark.parametrize(("stale_count", "label"), [(3, Label.NOT_FRAUD), (4, Label.UNCERTAIN)])
def test_more_stale_features_than_allowed_make_the_label_uncertain(stale_count: int, label: Label) -> None:
    decision = scored(0.01, stale(*CARD_ACTIVITY[:stale_count]))

    assert decision.label is label
    assert codes(decision)[-1] == "FEATURES_STALE"


def test_degradations_come_before_the_score_and_flags_after() -> None:
    outcome = ScoringOutcome(
        FRAUD_MLP_1,
        0.5,
        FeatureSummary(5, (*CARD_ACTIVITY, *MERCHANT_RISK), tuple(f"f{i}" for i in range(4))),
        (FailedHop(Hop.FEATURES, "DEADLINE_EXCEEDED"),),
    )

    assert codes(label_policy().decide(outcome)) == [
        "FEATURES_FAILED",
        "TOO_MANY_MISSING_FEATURES",
        "TOO_MANY_STALE_FEATURES",
        "SCORE_ABOVE_THRESHOLD",
        "NEW_CARD",
        "FEATURES_MISSING",
        "FEATURES_STALE",
    ]


def test_without_limits_any_number_of_missing_features_is_only_flagged() -> None:
    decision = scored(0.01, missing(*CARD_ACTIVITY, *MERCHANT_RISK, DEVICE), missing_features=None)

    assert decision.label is Label.NOT_FRAUD


def catalogue() -> PolicyCatalogue:
    later = label_policy(policy_version="test.2", applies_to={"model": "fraud_mlp", "versions": ["2"]})
    return PolicyCatalogue({"fraud_mlp_v1": label_policy(), "fraud_mlp_v2": later}, fallback="fraud_mlp_v2")


def test_catalogue_picks_the_policy_covering_the_model_version() -> None:
    decision = catalogue().decide(ScoringOutcome(FRAUD_MLP_1, 0.01, ALL_PRESENT))

    assert decision.policy_version == "test.1"


def test_a_score_of_a_model_no_policy_covers_is_uncertain() -> None:
    decision = catalogue().decide(ScoringOutcome(ModelVersion("fraud_mlp", "3"), 0.99, ALL_PRESENT))

    assert decision == LabelDecision(
        Label.UNCERTAIN, (Reason("NO_POLICY", "no label policy covers fraud_mlp version 3"),), ""
    )


@pytest.mark.parametrize("model", [None, ModelVersion("fraud_mlp", "3")])
def test_the_fallback_policy_labels_outcomes_without_a_score(model: ModelVersion | None) -> None:
    outcome = ScoringOutcome(model, None, None, (FailedHop(Hop.PREDICT, "UNAVAILABLE"),))

    decision = catalogue().decide(outcome)

    assert decision.label is Label.UNCERTAIN
    assert decision.policy_version == "test.2"
    assert codes(decision) == ["PREDICT_FAILED"]
