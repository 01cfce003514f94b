import math

import grpc
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from services.features.online import ONLINE_STORE_HOP, FeatureStatus, OnlineFeatures, open_online_store
from services.features.settings import FeaturesSettings
from services.runtime.errors import UpstreamFailed
from tests.features.conftest import free_port, write_repo_copy
from tests.features.known_entities import (
    CARD_ACTIVITY,
    FEATURE_SERVICE,
    JOIN_KEYS,
    assert_stored_values_read_back,
    by_name,
    read_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_features(redis_address, known_transactions, tmp_path_factory) -> OnlineFeatures:
    """The built registry read from Redis, holding only the known transactions' latest rows: writing a few
    rows takes milliseconds where materializing the history would take minutes."""
    repo = write_repo_copy(tmp_path_factory.mktemp("redis_repo"))
    store = open_online_store(
        FeaturesSettings(feature_repo=repo, online_store="redis", redis_address=redis_address)
    )
    for view, join_key in JOIN_KEYS.items():
        rows = pd.DataFrame([known.latest[view] for known in known_transactions]).infer_objects()
        store.write_to_online_store(view, rows.rename_axis(join_key).reset_index())
    return OnlineFeatures(store, [FEATURE_SERVICE])


def test_the_store_is_redis(redis_features) -> None:
    assert redis_features.store.config.online_store.type == "redis"


def test_known_entities_read_back_what_was_written(redis_features, known_transactions) -> None:
    for known in known_transactions:
        vector = read_for(redis_features, known, known.materialized_until)

        assert_stored_values_read_back(vector, known)
        assert set(vector.statuses) == {FeatureStatus.PRESENT}


def test_an_unknown_card_has_no_card_features(redis_features, known_transactions) -> None:
    known = known_transactions[0]

    features = by_name(read_for(redis_features, known, known.materialized_until, card_id="card_never_seen"))

    for name in (*CARD_ACTIVITY, "device_txn_count"):
        value, status, age = features[name]
        assert math.isnan(value) and (status, age) == (FeatureStatus.MISSING, -1), name
    assert features["merchant_fraud_rate_30d"][1] is FeatureStatus.PRESENT


def test_an_unreachable_store_is_an_upstream_failure(known_transactions, tmp_path) -> None:
    repo = write_repo_copy(tmp_path / "repo")
    nothing_listening = f"127.0.0.1:{free_port()}"
    store = open_online_store(
        FeaturesSettings(feature_repo=repo, online_store="redis", redis_address=nothing_listening)
    )
    features = OnlineFeatures(store, [FEATURE_SERVICE])
    known = known_transactions[0]

    failed = {"hop": ONLINE_STORE_HOP, "grpc_code": "UNAVAILABLE"}
    before = REGISTRY.get_sample_value("scoregraph_upstream_requests_total", failed) or 0

    with pytest.raises(UpstreamFailed) as raised:
        read_for(features, known, known.materialized_until)

    assert (raised.value.hop, raised.value.code) == (ONLINE_STORE_HOP, grpc.StatusCode.UNAVAILABLE)
    # The store is the features service's upstream hop: its failed read is counted and timed.
    assert REGISTRY.get_sample_value("scoregraph_upstream_requests_total", failed) == before + 1
    assert REGISTRY.get_sample_value("scoregraph_upstream_duration_seconds_count", failed) == before + 1
