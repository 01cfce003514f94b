"""Time-stamped feature tables computed from transaction history, written as parquet for Feast's file store.

Each row is an entity's state *after* a transaction (or at the end of a day), stamped with that time, so
Feast's point-in-time join can give a labelled transaction exactly what was known just before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from services.features.keys import card_device_id, card_id
from services.synthetic.transactions import USD_RATES

#: A card-testing probe is a transaction this small (USD).
SMALL_AMOUNT_USD = 5.0
CARD_WINDOWS = {"1h": "1h", "24h": "24h", "7d": "7D"}
#: Every currency in USD_RATES has two decimals; a zero-decimal one (JPY) would need its own exponent.
MINOR_UNITS_PER_MAJOR = 100.0


def to_usd(amount_minor: pd.Series | np.ndarray, currency: pd.Series | np.ndarray) -> np.ndarray:
    rate = pd.Series(currency).map(USD_RATES).to_numpy(dtype=float)
    return np.asarray(amount_minor, dtype=float) / MINOR_UNITS_PER_MAJOR / rate


def minor_to_usd(amount_minor: int, currency_code: str) -> float:
    """One amount, converted as `to_usd` converts a column; KeyError for a currency with no rate."""
    return amount_minor / MINOR_UNITS_PER_MAJOR / USD_RATES[currency_code]


def with_entity_keys(tx: pd.DataFrame, card_key: str) -> pd.DataFrame:
    """The transactions in the data domain: hashed entity keys, USD amounts, no card number."""
    out = tx.drop(columns=["card_number"]).copy()
    unique = tx["card_number"].unique()
    ids = dict(zip(unique, (card_id(n, card_key) for n in unique), strict=True))
    out["card_id"] = tx["card_number"].map(ids)
    pairs = out[["card_id", "device_id"]].drop_duplicates()
    pair_ids = {(c, d): card_device_id(c, d) for c, d in pairs.itertuples(index=False)}
    out["card_device_id"] = [pair_ids[(c, d)] for c, d in zip(out["card_id"], out["device_id"], strict=True)]
    out["amount_usd"] = to_usd(out["amount_minor"], out["currency_code"])
    return out


def card_activity(tx: pd.DataFrame) -> pd.DataFrame:
    tx = tx.sort_values(["card_id", "created_at"], kind="stable")
    frame = pd.DataFrame(
        {
            "card_id": tx["card_id"].to_numpy(),
            "event_timestamp": tx["created_at"].to_numpy(),
            "amount": tx["amount_usd"].to_numpy(),
            "small": (tx["amount_usd"] < SMALL_AMOUNT_USD).astype(float).to_numpy(),
        }
    )
    grouped = frame.set_index("event_timestamp").groupby("card_id", sort=False)
    out = frame[["card_id", "event_timestamp"]].copy()
    for name, window in CARD_WINDOWS.items():
        rolled = grouped["amount"].rolling(window)
        out[f"txn_count_{name}"] = rolled.count().to_numpy()
        out[f"txn_amount_{name}"] = rolled.sum().to_numpy()
    out["small_txn_count_24h"] = grouped["small"].rolling("24h").sum().to_numpy()
    out["avg_amount_30d"] = grouped["amount"].rolling("30D").mean().to_numpy()
    out["last_txn_ts"] = out["event_timestamp"].astype("int64") / 1e9
    return out


def merchant_risk(tx: pd.DataFrame) -> pd.DataFrame:
    """Daily snapshots of each merchant's fraud rate over the previous 30 days, stamped at the day's end."""
    day = tx["created_at"].dt.floor("D")
    daily = (
        tx.assign(day=day).groupby(["merchant_id", "day"]).agg(n=("is_fraud", "size"), f=("is_fraud", "sum"))
    )
    days = pd.date_range(day.min(), day.max(), freq="D")
    n = daily["n"].unstack("merchant_id").reindex(days).fillna(0)
    f = daily["f"].unstack("merchant_id").reindex(days).fillna(0)
    n30, f30 = n.rolling(30, min_periods=1).sum(), f.rolling(30, min_periods=1).sum()
    # A prior of 1% over 20 transactions keeps a merchant with three sales from reading as 33% fraud.
    rate = (f30 + 0.2) / (n30 + 20)
    out = pd.DataFrame(
        {
            "merchant_fraud_rate_30d": rate.stack(),
            "merchant_txn_count_30d": n30.stack(),
        }
    ).reset_index(names=["day", "merchant_id"])
    out["event_timestamp"] = out.pop("day") + pd.Timedelta(days=1)
    return out


def card_device(tx: pd.DataFrame) -> pd.DataFrame:
    tx = tx.sort_values("created_at", kind="stable")
    return pd.DataFrame(
        {
            "card_device_id": tx["card_device_id"].to_numpy(),
            "event_timestamp": tx["created_at"].to_numpy(),
            "device_txn_count": (tx.groupby("card_device_id").cumcount() + 1).astype(float).to_numpy(),
        }
    )


TABLES = {"card_activity": card_activity, "merchant_risk": merchant_risk, "card_device": card_device}


def write_tables(tx: pd.DataFrame, out_dir: Path) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, build in TABLES.items():
        table = build(tx)
        # DuckDB (Feast's offline store here) reads microsecond timestamps; pandas writes nanoseconds.
        table["event_timestamp"] = table["event_timestamp"].astype("datetime64[us, UTC]")
        table.to_parquet(out_dir / f"{name}.parquet", index=False)
        rows[name] = len(table)
    return rows
