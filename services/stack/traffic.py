"""Business traffic from the generator's live stream: rows of data/raw/live.parquet as Score requests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from scoregraph.gateway.v1 import gateway_pb2

from services.stack.topology import REPO

LIVE_STREAM = REPO / "data" / "raw" / "live.parquet"
CHANNELS = {
    name: gateway_pb2.Channel.Value(f"CHANNEL_{name}") for name in ("ONLINE", "IN_STORE", "MOBILE_APP")
}


def load_live(path: Path = LIVE_STREAM, now: datetime | None = None) -> pd.DataFrame:
    """The live stream, moved forward by whole days when it is older than a day.

    Whole days keep each transaction's hour (night-time matters to the model) and only lengthen the gap since
    the card's last known activity; the gateway refuses timestamps more than a few days old.
    """
    live = pd.read_parquet(path)
    now = now or datetime.now(UTC)
    behind = pd.Timestamp(now) - live["created_at"].max()
    live["created_at"] = live["created_at"] + pd.Timedelta(days=max(behind.days, 0))
    return live


def fraud_enriched_sample(live: pd.DataFrame, size: int, fraud_share: float, seed: int = 1) -> pd.DataFrame:
    """A sample with enough fraud to read: at 1% fraud, 300 transactions would hold three."""
    fraud = live[live["is_fraud"]]
    legit = live[~live["is_fraud"]]
    n_fraud = min(len(fraud), round(size * fraud_share))
    sample = pd.concat(
        [fraud.sample(n_fraud, random_state=seed), legit.sample(size - n_fraud, random_state=seed)]
    )
    return sample.sort_values("created_at").reset_index(drop=True)


def score_request(row) -> gateway_pb2.ScoreRequest:
    created = Timestamp()
    created.FromDatetime(row.created_at.to_pydatetime())
    return gateway_pb2.ScoreRequest(
        transaction=gateway_pb2.Transaction(
            transaction_id=row.transaction_id,
            card_number=row.card_number,
            customer_id=row.customer_id,
            merchant_id=row.merchant_id,
            merchant_category_code=row.merchant_category_code,
            amount=gateway_pb2.Money(currency_code=row.currency_code, amount_minor=int(row.amount_minor)),
            created_at=created,
            channel=CHANNELS[row.channel],
            ip_address=row.ip_address,
            device_id=row.device_id,
            card_country=row.card_country,
            merchant_country=row.merchant_country,
            ip_country=row.ip_country,
        )
    )
