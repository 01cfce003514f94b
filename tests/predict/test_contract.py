import pytest

from services.predict.contract import FeatureContract


def test_parameters_round_trip():
    contract = FeatureContract("fraud_model_v1", ("a__x", "a__y", "b__z"))

    assert FeatureContract.from_parameters(contract.as_parameters()) == contract
    assert contract.width == 3


@pytest.mark.parametrize(
    ("feature_names", "message"),
    [
        ((), "lists no features"),
        (("a__x", "a__x"), "lists a feature twice"),
        (("a__x,a__y",), "free of ','"),
    ],
)
def test_rejects_contracts_that_cannot_travel_as_one_string(feature_names, message):
    with pytest.raises(ValueError, match=message):
        FeatureContract("fraud_model_v1", feature_names)


def test_names_missing_config_parameters():
    with pytest.raises(ValueError, match="feature_names"):
        FeatureContract.from_parameters({"feature_service": "fraud_model_v1"})
