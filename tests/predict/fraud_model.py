"""The small fraud model the predict tests serve, and the feature contract it is trained on."""

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

FEATURE_SERVICE = "fraud_model_v1"
FEATURE_NAMES = (
    "card_activity__txn_count_1h",
    "card_activity__txn_count_24h",
    "card_activity__amount_sum_24h",
    "merchant_risk__chargeback_rate_30d",
    "transaction__amount_minor",
    "transaction__hour_of_day",
)
MODEL_NAME = "fraud_mlp"


def train_classifier_export() -> onnx.ModelProto:
    """An MLP trained on a learnable rule, so its scores vary with the input instead of sitting at 0 or 1."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    labels = (features[:, 0] - 0.5 * features[:, 3] + 0.3 * rng.normal(size=400) > 0.4).astype(int)
    classifier = MLPClassifier((8,), max_iter=2000, random_state=0).fit(features, labels)
    return to_onnx(classifier, features[:1], options={id(classifier): {"zipmap": False}})
