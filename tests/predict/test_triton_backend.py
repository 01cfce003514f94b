import importlib
import sys
import types

import pytest

FEATURES = ["a__x", "a__y", "b__z"]
METADATA = {"scoregraph.feature_service": "fraud_model_v1", "scoregraph.feature_names": "a__x,a__y,b__z"}


@pytest.fixture
def contract_mismatch(monkeypatch):
    """triton_backend imports a module only Triton's stub provides; a placeholder lets the check load here."""
    monkeypatch.setitem(
        sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils")
    )
    return importlib.import_module("services.predict.triton_backend").contract_mismatch


def test_accepts_the_same_contract(contract_mismatch):
    assert contract_mismatch("fraud_model_v1", FEATURES, METADATA) is None


@pytest.mark.parametrize(
    ("feature_service", "feature_names", "message"),
    [
        (
            "fraud_model_v2",
            FEATURES,
            "model.onnx was trained on feature service fraud_model_v1 "
            "but config.pbtxt serves feature service fraud_model_v2",
        ),
        (
            "fraud_model_v1",
            FEATURES[:2],
            "model.onnx takes 3 features but feature service fraud_model_v1 lists 2",
        ),
        (
            "fraud_model_v1",
            ["a__x", "b__z", "a__y"],
            "feature order in model.onnx differs from feature service fraud_model_v1 at position 1: "
            "model.onnx has 'a__y', config.pbtxt has 'b__z'",
        ),
    ],
)
def test_says_what_differs(contract_mismatch, feature_service, feature_names, message):
    assert contract_mismatch(feature_service, feature_names, METADATA) == message


def test_refuses_a_model_without_a_contract(contract_mismatch):
    assert "no feature contract" in contract_mismatch("fraud_model_v1", FEATURES, {})
