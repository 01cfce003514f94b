"""Business traffic from the generator's live stream: rows of data/raw/live.parquet as Score requests."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp
from scoregraph.gateway.v1 import gateway_pb2

from services.gateway.settings import GatewaySettings
from services.runtime.settings import read_settings
from services.stack.topology import REPO

LIVE_STREAM = REPO / "data" / "raw" / "live.parquet"
CHANNELS = {
    name: gateway_pb2.Channel.Value(f"CHANNEL_{name}") for name in ("ONLINE", "IN_STORE", "MOBILE_APP")
}


#: How long the demo, a benchmark or a test may go on scoring a stream it has loaded: its oldest transaction
#: must stay within the gateway's maximum age that long.
SCORING_MARGIN = timedelta(hours=1)


def days_to_move(oldest: datetime, newest: datetime, now: datetime, max_age: timedelta) -> int:
    """Whole days a stream from `oldest` to `newest` must move forward for the gateway, which refuses
    transactions older than `max_age`, to take all of it for a while yet (SCORING_MARGIN); 0 while it does
    unmoved. Never so far that its newest would lie in the future: a `max_age` shorter than the stream leaves
    the oldest refused."""
    late = now - max_age + SCORING_MARGIN - oldest
    needed = max(math.ceil(late / timedelta(days=1)), 0)
    return min(needed, max((now - newest) // timedelta(days=1), 0))


def load_live(
    path: Path = LIVE_STREAM, now: datetime | None = None, max_age: timedelta | None = None
) -> pd.DataFrame:
    """The live stream, as generated while the gateway still takes it, else moved forward by whole days.

    Unmoved, a build scores the same on every day the gateway takes its live day (a week, by default): each
    transaction is judged as of its own time, against features stored as of the build. Moved, each keeps its
    hour (night-time matters to the model), but the stored features (a card's last activity, a merchant's
    risk) look older by the days moved, and past their view's ttl read as stale. `attrs["days_moved"]` says
    how many days it moved. `max_age`: the gateway's (SCOREGRAPH_GATEWAY_MAX_TRANSACTION_AGE_S) unless given.
    """
    live = pd.read_parquet(path)
    if max_age is None:
        max_age = timedelta(seconds=read_settings(GatewaySettings).max_transaction_age_s)
    created = live["created_at"]
    days = days_to_move(
        created.min().to_pydatetime(), created.max().to_pydatetime(), now or datetime.now(UTC), max_age
    )
    live["created_at"] = live["created_at"] + pd.Timedelta(days=days)
    live.attrs["days_moved"] = days
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
