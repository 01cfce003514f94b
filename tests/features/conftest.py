import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import redis
import yaml
from feast import FeatureStore

from services.features.feature_service import FEATURE_REPO
from services.features.online import OnlineFeatures, open_online_features
from services.features.settings import FeaturesSettings
from tests.features.known_entities import JOIN_KEYS, KnownTransaction

DATA = Path(__file__).resolve().parents[2] / "data"
REGISTRY = DATA / "feast" / "registry.db"
FEATURE_TABLES = DATA / "features"
REDIS_START_TIMEOUT_S = 10


def _require_build() -> None:
    if not (DATA / "feast" / "materialized").exists():
        pytest.fail("the Feast registry and online store are not built: run `make build`")


@pytest.fixture(scope="session")
def sqlite_features() -> OnlineFeatures:
    """The online reader over the store `make build` materialized, read-only, shared by the session: opening
    Feast's registry takes a second or two."""
    _require_build()
    return open_online_features(FeaturesSettings(online_store="sqlite"))


def _materialized_rows(store: FeatureStore, view: str) -> tuple[pd.DataFrame, datetime]:
    # What `feast materialize-incremental` wrote: per entity, the latest row inside the view's intervals.
    intervals = store.get_feature_view(view).materialization_intervals
    start, end = min(i[0] for i in intervals), max(i[1] for i in intervals)
    table = pd.read_parquet(FEATURE_TABLES / f"{view}.parquet")
    table = table[(table["event_timestamp"] > start) & (table["event_timestamp"] <= end)]
    latest = table.sort_values("event_timestamp").groupby(JOIN_KEYS[view]).tail(1)
    return latest.set_index(JOIN_KEYS[view]), end


@pytest.fixture(scope="session")
def known_transactions(sqlite_features) -> list[KnownTransaction]:
    """Recent transactions whose every entity is in the online store, with the values stored for them."""
    store = sqlite_features.store
    tables, ends = {}, []
    for view in JOIN_KEYS:
        tables[view], end = _materialized_rows(store, view)
        ends.append(end)
    tx = pd.read_parquet(FEATURE_TABLES / "transactions.parquet")
    tx = tx[tx["created_at"] <= min(ends)].sort_values("created_at", ascending=False)
    known = []
    for row in tx.itertuples():
        keys = {
            "card_activity": row.card_id,
            "merchant_risk": row.merchant_id,
            "card_device": row.card_device_id,
        }
        if all(key in tables[view].index for view, key in keys.items()):
            latest = {view: tables[view].loc[key] for view, key in keys.items()}
            known.append(KnownTransaction(row.card_id, row.merchant_id, row.device_id, latest, min(ends)))
        if len(known) == 3:
            return known
    pytest.fail("no transaction has all its entities materialized: rebuild with `make build`")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on a free loopback port, with no persistence, for the whole run."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def write_repo_copy(root: Path, **overrides) -> Path:
    """A Feast repository folder holding only feature_store.yaml, on a copy of the built registry, so a test
    can change the online store or the registry without touching what `make build` made."""
    _require_build()
    root.mkdir(parents=True, exist_ok=True)
    registry = root / "registry.db"
    shutil.copy(REGISTRY, registry)
    config = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    config.update(registry=str(registry), **overrides)
    (root / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return root
