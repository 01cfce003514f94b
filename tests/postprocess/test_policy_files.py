from pathlib import Path

import pytest

from services.postprocess.policy import Label, ModelVersion, PolicyCatalogue, PolicyError, ScoringOutcome
from tests.postprocess.conftest import POLICY, policy_document


def test_shipped_policy_covers_the_served_model(shipped_policies: PolicyCatalogue) -> None:
    decision = shipped_policies.decide(ScoringOutcome(ModelVersion("fraud_mlp", "1"), 0.93, None))

    assert decision.label is Label.HIGHLY_SUSPICIOUS
    assert decision.policy_version


def test_loads_every_policy_file_in_the_folder(write_policy) -> None:
    write_policy("fraud_mlp")
    path = write_policy(
        "fraud_mlp_v2",
        policy_document(policy_version="test.2", applies_to={"model": "fraud_mlp", "versions": [2]}),
    )

    policies = PolicyCatalogue.load(path.parent, fallback="fraud_mlp")

    assert sorted(policies.policies) == ["fraud_mlp", "fraud_mlp_v2"]
    # YAML reads an unquoted version as a number; versions are strings on the wire.
    assert policies.policies["fraud_mlp_v2"].applies_to.versions == ["2"]


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"thresholds": {"suspicious": 1.2, "highly_suspicious": 0.7}}, "thresholds.suspicious", "less than"),
        ({"thresholds": {"suspicious": 0.7, "highly_suspicious": 0.2}}, "thresholds", "below"),
        ({"thresholds": {"suspicious": 0.2}}, "thresholds.highly_suspicious", "required"),
        ({"policy_version": ""}, "policy_version", "at least 1"),
        ({"applies_to": {"model": "fraud_mlp", "versions": []}}, "applies_to.versions", "at least 1"),
        ({"uncertain_band": {"lower": 0.3, "upper": 0.2, "why": "x"}}, "uncertain_band", "below upper"),
        ({"uncertain_band": {"lower": 0.2, "upper": 0.3}}, "uncertain_band.why", "required"),
        ({"missing_features": {}}, "missing_features", "max_count, max_share"),
        ({"stale_features": {"max_count": -1}}, "stale_features.max_count", "greater than"),
        ({"threshold": {}}, "threshold", "not permitted"),
        (
            {"feature_groups": [{"code": "new card", "description": "x", "features": ["a"]}]},
            "feature_groups.0.code",
            "UPPER_SNAKE_CASE",
        ),
        (
            {"feature_groups": [{"code": "NO_POLICY", "description": "x", "features": ["a"]}]},
            "feature_groups.0",
            "reserved",
        ),
        (
            {"feature_groups": [{"code": "NEW_CARD", "description": "x", "features": []}]},
            "feature_groups.0.features",
            "at least 1",
        ),
        ({"feature_groups": POLICY["feature_groups"][:1] * 2}, "(document)", "share a code"),
    ],
)
def test_an_invalid_policy_names_the_file_and_field(write_policy, overrides, field, problem) -> None:
    path = write_policy(document=policy_document(**overrides))

    with pytest.raises(PolicyError) as raised:
        PolicyCatalogue.load(path.parent, fallback="fraud_mlp")

    message = str(raised.value)
    assert str(path) in message
    assert f"{field}: " in message
    assert problem in message


def test_malformed_yaml_names_the_file(write_policy) -> None:
    path = write_policy(text="thresholds: [0.2\n")

    with pytest.raises(PolicyError, match=f"{path} cannot be read"):
        PolicyCatalogue.load(path.parent, fallback="fraud_mlp")


def test_empty_file_is_invalid(write_policy) -> None:
    path = write_policy(text="")

    with pytest.raises(PolicyError, match="is invalid: \\(document\\): "):
        PolicyCatalogue.load(path.parent, fallback="fraud_mlp")


def test_two_policies_may_not_cover_one_model_version(write_policy) -> None:
    first = write_policy("a")
    second = write_policy("b")

    with pytest.raises(PolicyError, match=f"{first} and {second} both cover fraud_mlp version 1"):
        PolicyCatalogue.load(first.parent, fallback="a")


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no label policy"):
        PolicyCatalogue.load(tmp_path, fallback="fraud_mlp")


def test_the_fallback_policy_must_exist(write_policy) -> None:
    path = write_policy("fraud_mlp")

    with pytest.raises(PolicyError, match="fallback policy 'fraud_gbm'"):
        PolicyCatalogue.load(path.parent, fallback="fraud_gbm")
