import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from feast import FeatureStore

from services.features.feature_service import FEATURE_REPO, contract_of, historical_matrix
from tests.features.known_entities import CARD_ACTIVITY, FEATURE_SERVICE, MERCHANT_RISK

pytestmark = pytest.mark.integration

LABEL_TIME = pd.Timestamp("2026-03-01 12:00", tz="UTC")
EARLIER, LATER = LABEL_TIME - pd.Timedelta(hours=2), LABEL_TIME + pd.Timedelta(hours=1)
USUAL, OUTLANDISH = 1.0, 9999.0


def card_activity_row(card_id: str, at: pd.Timestamp, value: float) -> dict:
    return {
        "card_id": card_id,
        "event_timestamp": at,
        **dict.fromkeys(CARD_ACTIVITY, value),
        "last_txn_ts": at.timestamp(),
    }


def write_tables(folder: Path) -> None:
    """Tables shaped as aggregates.write_tables writes them, with a few rows planted around one instant."""
    folder.mkdir()
    tables = {
        "card_activity": [
            card_activity_row("card_a", EARLIER, USUAL),
            # The labelled transaction's own row: what it adds must not be a feature of itself.
            card_activity_row("card_a", LABEL_TIME, 5000.0),
            card_activity_row("card_a", LATER, OUTLANDISH),
            card_activity_row("card_b", LATER, OUTLANDISH),
        ],
        "merchant_risk": [
            {
                "merchant_id": "m_1",
                "event_timestamp": LABEL_TIME - pd.Timedelta(days=1),
                "merchant_fraud_rate_30d": 0.01,
                "merchant_txn_count_30d": 120.0,
            },
        ],
        "card_device": [
            {"card_device_id": "cd_a", "event_timestamp": EARLIER, "device_txn_count": 3.0},
        ],
    }
    for name, rows in tables.items():
        table = pd.DataFrame(rows)
        table["event_timestamp"] = table["event_timestamp"].astype("datetime64[us, UTC]")
        table.to_parquet(folder / f"{name}.parquet", index=False)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory) -> FeatureStore:
    """The repository's definitions applied to a fresh registry over handmade tables.

    `feast apply` runs in a child process: it imports definitions.py, which reads SCOREGRAPH_FEATURE_DATA
    once at import, and it must not touch the registry `make build` made.
    """
    root = tmp_path_factory.mktemp("point_in_time")
    write_tables(root / "features")
    config = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    config.update(
        registry=str(root / "registry.db"),
        online_store={"type": "sqlite", "path": str(root / "online_store.db")},
    )
    config_file = root / "feature_store.yaml"
    config_file.write_text(yaml.safe_dump(config))
    subprocess.run(
        [Path(sys.executable).parent / "feast", "-c", FEATURE_REPO, "-f", config_file, "apply"],
        env={**os.environ, "SCOREGRAPH_FEATURE_DATA": str(root / "features")},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return FeatureStore(repo_path=str(FEATURE_REPO), fs_yaml_file=config_file)


def labelled(card_id: str) -> dict:
    return {
        "transaction_id": f"tx_{card_id}",
        "created_at": LABEL_TIME,
        "card_id": card_id,
        "merchant_id": "m_1",
        "card_device_id": "cd_a",
        "amount_usd": 20.0,
        "card_country": "DE",
        "merchant_country": "DE",
        "ip_country": "DE",
        "channel": "ONLINE",
    }


def test_the_training_set_only_sees_rows_from_before_each_label(planted_store) -> None:
    tx = pd.DataFrame([labelled("card_a"), labelled("card_b")])

    matrix = historical_matrix(planted_store, tx, contract_of(planted_store, FEATURE_SERVICE))

    card_a, card_b = matrix.iloc[0], matrix.iloc[1]
    assert card_a[list(CARD_ACTIVITY)].tolist() == [USUAL] * len(CARD_ACTIVITY)
    assert card_b[list(CARD_ACTIVITY)].isna().all()
    assert card_b[list(MERCHANT_RISK)].tolist() == [0.01, 120.0]
    assert card_a["device_txn_count"] == 3.0
    assert card_a["amount_log"] == pytest.approx(math.log1p(20.0))
