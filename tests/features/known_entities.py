"""Transactions whose entities the built online store holds, and how to read and check their vectors."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from services.features.feature_repo.definitions import fraud_model_v1
from services.features.online import EntityKeys, FeatureRequest, FeatureStatus, FeatureVector, RequestValues

FEATURE_SERVICE = "fraud_model_v1"
JOIN_KEYS = {"card_activity": "card_id", "merchant_risk": "merchant_id", "card_device": "card_device_id"}


@dataclass(frozen=True)
class KnownTransaction:
    """A transaction whose card, merchant and (card, device) pair all have a materialized latest value."""

    card_id: str
    merchant_id: str
    device_id: str
    latest: dict[str, pd.Series]
    """The materialized row of each stored feature view, by view name."""
    materialized_until: datetime


# The stored features the model reads, by view, as the feature repository declares them.
STORED = {
    projection.name: tuple(feature.name for feature in projection.features)
    for projection in fraud_model_v1.feature_view_projections
    if projection.name in JOIN_KEYS
}
CARD_ACTIVITY, MERCHANT_RISK, CARD_DEVICE = (STORED[view] for view in JOIN_KEYS)
MS = timedelta(milliseconds=1)
VALUES = RequestValues(1250, "EUR", "DE", "DE", "DE", "IN_STORE")


def read_for(features, known: KnownTransaction, event_time: datetime, **keys: str) -> FeatureVector:
    entity_keys = EntityKeys(
        card_id=keys.get("card_id", known.card_id),
        merchant_id=keys.get("merchant_id", known.merchant_id),
        device_id=keys.get("device_id", known.device_id),
    )
    return features.read(FeatureRequest(FEATURE_SERVICE, entity_keys, VALUES, event_time))


def by_name(vector: FeatureVector) -> dict[str, tuple[float, FeatureStatus, int]]:
    return {
        name: (value, status, age)
        for name, value, status, age in zip(
            vector.names, vector.values, vector.statuses, vector.ages_ms, strict=True
        )
    }


def assert_stored_values_read_back(vector: FeatureVector, known: KnownTransaction) -> None:
    features = by_name(vector)
    for view, names in STORED.items():
        row = known.latest[view]
        observed = row["event_timestamp"]
        # Feast's SQLite store truncates event timestamps to whole seconds; Redis keeps their fraction.
        ages = {(vector.event_time - observed) // MS, (vector.event_time - observed.floor("s")) // MS}
        for name in names:
            value, status, age = features[name]
            assert (value, status) == (row[name], FeatureStatus.PRESENT), name
            assert age in ages, name
