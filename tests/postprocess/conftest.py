import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.postprocess.policy import LabelPolicy, PolicyCatalogue
from services.postprocess.settings import DEFAULT_POLICY_DIR

CARD_ACTIVITY = (
    "txn_count_1h",
    "txn_amount_1h",
    "txn_count_24h",
    "txn_amount_24h",
    "small_txn_count_24h",
    "txn_count_7d",
    "txn_amount_7d",
    "avg_amount_30d",
)
MERCHANT_RISK = ("merchant_fraud_rate_30d", "merchant_txn_count_30d")
DEVICE = "device_txn_count"
STORED_FEATURES = (*CARD_ACTIVITY, *MERCHANT_RISK, DEVICE)
MODEL_WIDTH = 20

# Written out rather than read from policies/fraud_mlp.yaml, so that tuning the shipped policy does not
# change what the logic tests mean.
POLICY: dict[str, Any] = {
    "policy_version": "test.1",
    "applies_to": {"model": "fraud_mlp", "versions": ["1"]},
    "thresholds": {"suspicious": 0.2, "highly_suspicious": 0.7},
    "missing_features": {"max_count": 9},
    "stale_features": {"max_count": 3},
    "feature_groups": [
        {"code": "NEW_CARD", "description": "no history for this card", "features": list(CARD_ACTIVITY)},
        {
            "code": "NEW_DEVICE",
            "description": "first time this card is used on this device",
            "features": [DEVICE],
        },
    ],
}


def policy_document(**overrides: Any) -> dict[str, Any]:
    return {**copy.deepcopy(POLICY), **overrides}


def label_policy(**overrides: Any) -> LabelPolicy:
    return LabelPolicy.model_validate(policy_document(**overrides))


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """Writes a policy file into a fresh folder, as a data scientist would; returns the file."""

    def write(name: str = "fraud_mlp", document: Any = None, *, text: str | None = None) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(document or policy_document()))
        return path

    return write


@pytest.fixture(scope="session")
def shipped_policies() -> PolicyCatalogue:
    return PolicyCatalogue.load(DEFAULT_POLICY_DIR, "fraud_mlp")
