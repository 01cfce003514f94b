"""The model's inputs as Feast defines them: entity keys, request-time values and the feature service's order.

Training (offline, point-in-time) and the features service (online) both go through here, so a vector is
assembled the same way in both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from feast import FeatureStore

from services.features import forget_feast_metrics_dir
from services.predict.contract import FeatureContract

# Once, here: every module of this package that imports feast (online.py too) imports this one.
forget_feast_metrics_dir()

FEATURE_REPO = Path(__file__).parent / "feature_repo"
ENTITY_KEYS = ("card_id", "merchant_id", "card_device_id")
#: The `transaction` RequestSource's fields, supplied with each read.
REQUEST_FIELDS = ("amount_usd", "event_ts", "card_country", "merchant_country", "ip_country", "channel")
#: What the model reads a missing feature as (a missing count is no activity). The model's own imputer applies
#: it; the features service returns NaN and flags the feature, so postprocess can tell a quiet card from an
#: unknown one.
MISSING_VALUE = 0.0
#: Features are read just before the transaction, so its own row (stamped at its time) is never used.
POINT_IN_TIME_OFFSET = pd.Timedelta(milliseconds=1)


def open_store(repo: Path = FEATURE_REPO) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


def contract_of(store: FeatureStore, feature_service: str, *, allow_cache: bool = False) -> FeatureContract:
    """Feature names in the feature service's declared order (Feast's short names, unique across views)."""
    service = store.get_feature_service(feature_service, allow_cache=allow_cache)
    names = tuple(f.name for projection in service.feature_view_projections for f in projection.features)
    return FeatureContract(feature_service, names)


def entity_frame(tx: pd.DataFrame) -> pd.DataFrame:
    """Entity rows for `get_historical_features` from data-domain transactions (see with_entity_keys)."""
    return pd.DataFrame(
        {
            **{key: tx[key].to_numpy() for key in ENTITY_KEYS},
            "event_timestamp": (tx["created_at"] - POINT_IN_TIME_OFFSET).to_numpy(),
            "amount_usd": tx["amount_usd"].to_numpy(),
            "event_ts": tx["created_at"].astype("int64").to_numpy() / 1e9,
            "card_country": tx["card_country"].to_numpy(),
            "merchant_country": tx["merchant_country"].to_numpy(),
            "ip_country": tx["ip_country"].to_numpy(),
            "channel": tx["channel"].to_numpy(),
            "transaction_id": tx["transaction_id"].to_numpy(),
        }
    )


def historical_matrix(store: FeatureStore, tx: pd.DataFrame, contract: FeatureContract) -> pd.DataFrame:
    """Point-in-time correct features for labelled transactions, in contract order, indexed like `tx`."""
    entities = entity_frame(tx)
    features = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service(contract.feature_service)
    ).to_df()
    # The offline store returns rows in its own order; transaction ids put them back.
    features = features.set_index("transaction_id").reindex(tx["transaction_id"])
    matrix = features[list(contract.feature_names)].astype(float)
    matrix.index = tx.index
    return matrix
