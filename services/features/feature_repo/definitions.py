"""scoregraph's feature repository: entities, feature views, on-demand features, the model's feature service.

The data engineers own this file. A model version is trained and served against exactly one FeatureService;
its feature order is the model's input order, recorded with the model in Triton's config.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

#: Generated parquet tables (make build); absolute so the registry works from any working directory.
#: SCOREGRAPH_FEATURE_DATA points `feast apply` at other tables, e.g. a test's handmade ones.
DATA = Path(os.environ.get("SCOREGRAPH_FEATURE_DATA", Path(__file__).resolve().parents[3] / "data/features"))

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A payment card, keyed by a keyed hash of its number",
)
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
card_device = Entity(
    name="card_device",
    join_keys=["card_device_id"],
    value_type=ValueType.STRING,
    description="A (card, device) pair: unseen pairs are a sign of account takeover",
)


def _source(name: str) -> FileSource:
    return FileSource(name=name, path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp")


card_activity = FeatureView(
    name="card_activity",
    entities=[card],
    ttl=timedelta(days=30),
    schema=[
        Field(name="txn_count_1h", dtype=Float64),
        Field(name="txn_amount_1h", dtype=Float64),
        Field(name="txn_count_24h", dtype=Float64),
        Field(name="txn_amount_24h", dtype=Float64),
        Field(name="small_txn_count_24h", dtype=Float64),
        Field(name="txn_count_7d", dtype=Float64),
        Field(name="txn_amount_7d", dtype=Float64),
        Field(name="avg_amount_30d", dtype=Float64),
        Field(name="last_txn_ts", dtype=Float64, description="Unix seconds of the card's latest transaction"),
    ],
    source=_source("card_activity"),
    description="Card velocity and spending habit, as of the card's latest transaction (amounts in USD)",
)

merchant_risk = FeatureView(
    name="merchant_risk",
    entities=[merchant],
    ttl=timedelta(days=3),
    schema=[
        Field(name="merchant_fraud_rate_30d", dtype=Float64),
        Field(name="merchant_txn_count_30d", dtype=Float64),
    ],
    source=_source("merchant_risk"),
    description="Merchant fraud rate over 30 days of labels, snapshotted daily",
)

card_device_history = FeatureView(
    name="card_device",
    entities=[card_device],
    ttl=timedelta(days=90),
    schema=[Field(name="device_txn_count", dtype=Float64)],
    source=_source("card_device"),
    description="How often this card has been used on this device",
)

transaction = RequestSource(
    name="transaction",
    schema=[
        Field(name="amount_usd", dtype=Float64),
        Field(name="event_ts", dtype=Float64),
        Field(name="card_country", dtype=String),
        Field(name="merchant_country", dtype=String),
        Field(name="ip_country", dtype=String),
        Field(name="channel", dtype=String),
    ],
    description="Request-time values of the transaction being scored (the features service supplies them)",
)


@on_demand_feature_view(
    sources=[card_activity, transaction],
    schema=[
        Field(name="amount_log", dtype=Float64),
        Field(name="amount_vs_habit", dtype=Float64),
        Field(name="hour_sin", dtype=Float64),
        Field(name="hour_cos", dtype=Float64),
        Field(name="is_night", dtype=Int64),
        Field(name="secs_since_last_txn_log", dtype=Float64),
        Field(name="ip_country_mismatch", dtype=Int64),
        Field(name="merchant_country_mismatch", dtype=Int64),
        Field(name="is_card_not_present", dtype=Int64),
    ],
    mode="python",
)
def transaction_context(inputs: dict) -> dict:
    # Imports inside: Feast stores this function in the registry and runs it in other processes.
    import math

    never = math.log1p(90 * 86400.0)  # a card with no history reads as "last seen long ago"
    out = {
        k: []
        for k in (
            "amount_log",
            "amount_vs_habit",
            "hour_sin",
            "hour_cos",
            "is_night",
            "secs_since_last_txn_log",
            "ip_country_mismatch",
            "merchant_country_mismatch",
            "is_card_not_present",
        )
    }
    for amount, ts, avg, last, card_c, merchant_c, ip_c, channel in zip(
        inputs["amount_usd"],
        inputs["event_ts"],
        inputs["avg_amount_30d"],
        inputs["last_txn_ts"],
        inputs["card_country"],
        inputs["merchant_country"],
        inputs["ip_country"],
        inputs["channel"],
        strict=True,
    ):
        hour = (ts % 86400.0) / 3600.0
        out["amount_log"].append(math.log1p(amount))
        out["amount_vs_habit"].append(math.log1p(amount) - math.log1p(avg or 0.0))
        out["hour_sin"].append(math.sin(2 * math.pi * hour / 24))
        out["hour_cos"].append(math.cos(2 * math.pi * hour / 24))
        out["is_night"].append(int(hour < 5))
        out["secs_since_last_txn_log"].append(math.log1p(max(ts - last, 0.0)) if last else never)
        out["ip_country_mismatch"].append(int(ip_c != card_c))
        out["merchant_country_mismatch"].append(int(merchant_c != card_c))
        out["is_card_not_present"].append(int(channel != "IN_STORE"))
    return out


fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[
        card_activity[
            [
                "txn_count_1h",
                "txn_amount_1h",
                "txn_count_24h",
                "txn_amount_24h",
                "small_txn_count_24h",
                "txn_count_7d",
                "txn_amount_7d",
                "avg_amount_30d",
            ]
        ],
        merchant_risk,
        card_device_history,
        transaction_context,
    ],
    description="Inputs of the fraud_mlp model, version 1, in its input order",
)
