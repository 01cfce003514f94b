import logging
import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from prometheus_client import REGISTRY

from services.features.aggregates import minor_to_usd
from services.features.feature_service import contract_of
from services.features.keys import DEV_CARD_KEY, card_device_id, card_id
from services.features.online import (
    EntityKeys,
    FeatureRequest,
    FeatureStatus,
    OnlineFeatures,
    RequestValues,
    open_online_store,
)
from services.features.settings import FeaturesSettings
from services.stack.topology import REPO
from tests.features.known_entities import (
    CARD_ACTIVITY,
    CARD_DEVICE,
    FEATURE_SERVICE,
    MERCHANT_RISK,
    assert_stored_values_read_back,
    by_name,
    read_for,
)

pytestmark = pytest.mark.integration


def test_the_vector_is_in_the_feature_services_order(sqlite_features) -> None:
    assert sqlite_features.contract(FEATURE_SERVICE) == contract_of(sqlite_features.store, FEATURE_SERVICE)


def test_known_entities_read_back_what_was_materialized(sqlite_features, known_transactions) -> None:
    served = {"hop": "online_store", "grpc_code": "OK"}
    before = REGISTRY.get_sample_value("scoregraph_upstream_duration_seconds_count", served) or 0
    for known in known_transactions:
        vector = read_for(sqlite_features, known, known.materialized_until)

        assert vector.names == contract_of(sqlite_features.store, FEATURE_SERVICE).feature_names
        assert_stored_values_read_back(vector, known)
        assert set(vector.statuses) == {FeatureStatus.PRESENT}
    # Each read is counted and timed as a call to the features service's upstream hop, the store.
    after = REGISTRY.get_sample_value("scoregraph_upstream_duration_seconds_count", served)
    assert after == before + len(known_transactions)


def test_an_unknown_card_has_no_card_features_and_the_rest_present(
    sqlite_features, known_transactions
) -> None:
    known = known_transactions[0]

    features = by_name(read_for(sqlite_features, known, known.materialized_until, card_id="card_never_seen"))

    # The (card, device) entity is derived from the card, so it is unknown too.
    for name in (*CARD_ACTIVITY, *CARD_DEVICE):
        value, status, age = features[name]
        assert math.isnan(value) and (status, age) == (FeatureStatus.MISSING, -1), name
    for name in MERCHANT_RISK:
        assert features[name][1] is FeatureStatus.PRESENT, name
    on_demand = [name for name in features if name not in {*CARD_ACTIVITY, *MERCHANT_RISK, *CARD_DEVICE}]
    assert [features[name][1:] for name in on_demand] == [(FeatureStatus.PRESENT, 0)] * len(on_demand)


@pytest.mark.parametrize("key", ["merchant_id", "device_id"])
def test_an_empty_key_leaves_its_view_missing(sqlite_features, known_transactions, key) -> None:
    known = known_transactions[0]

    vector = read_for(sqlite_features, known, known.materialized_until, **{key: ""})

    missing = {
        name
        for name, status in zip(vector.names, vector.statuses, strict=True)
        if status is FeatureStatus.MISSING
    }
    assert missing == set(MERCHANT_RISK if key == "merchant_id" else CARD_DEVICE)


def test_values_older_than_their_views_ttl_are_stale(sqlite_features, known_transactions) -> None:
    known = known_transactions[0]
    # Past card_activity's 30 days and merchant_risk's 3, within card_device's 90.
    event_time = known.materialized_until + timedelta(days=31)

    features = by_name(read_for(sqlite_features, known, event_time))

    for name in (*CARD_ACTIVITY, *MERCHANT_RISK):
        value, status, age = features[name]
        assert status is FeatureStatus.STALE and not math.isnan(value) and age > 30 * 86_400_000, name
    assert features["device_txn_count"][1] is FeatureStatus.PRESENT


def test_on_demand_features_see_the_request_values(sqlite_features, known_transactions) -> None:
    known = known_transactions[0]
    night = known.materialized_until.replace(hour=3)

    features = by_name(read_for(sqlite_features, known, night))

    assert features["amount_log"][0] == pytest.approx(math.log1p(12.50 / 0.92))
    assert features["is_night"][0] == 1.0
    assert features["is_card_not_present"][0] == 0.0


def test_the_lean_read_returns_what_feasts_get_online_features_returns(sqlite_features) -> None:
    """OnlineFeatures reads the store below Feast's SDK call for speed; it must answer the same."""
    live = pd.read_parquet(REPO / "data" / "raw" / "live.parquet").sample(40, random_state=2)
    store = sqlite_features.store
    service = store.get_feature_service(FEATURE_SERVICE)
    event_time = datetime.now(UTC)
    cards = [card_id(n, DEV_CARD_KEY) for n in live["card_number"]] + ["card_never_seen"]
    rows = list(live.itertuples(index=False)) + [next(live.itertuples(index=False))]
    new_devices = 0
    for card, row in zip(cards, rows, strict=True):
        values = RequestValues(
            int(row.amount_minor),
            row.currency_code,
            row.card_country,
            row.merchant_country,
            row.ip_country,
            row.channel,
        )
        ours = sqlite_features.read(
            FeatureRequest(
                FEATURE_SERVICE, EntityKeys(card, row.merchant_id, row.device_id), values, event_time
            )
        )
        sdk = store.get_online_features(
            features=service,
            entity_rows=[
                {
                    "card_id": card,
                    "merchant_id": row.merchant_id,
                    "card_device_id": card_device_id(card, row.device_id),
                    "amount_usd": minor_to_usd(values.amount_minor, values.currency_code),
                    "event_ts": event_time.timestamp(),
                    "card_country": row.card_country,
                    "merchant_country": row.merchant_country,
                    "ip_country": row.ip_country,
                    "channel": row.channel,
                }
            ],
        ).to_dict()
        for name, value, status in zip(ours.names, ours.values, ours.statuses, strict=True):
            expected = sdk[name][0]
            if expected is None:
                assert status is FeatureStatus.MISSING and math.isnan(value), name
                new_devices += name == "device_txn_count"
            else:
                assert value == pytest.approx(float(expected), rel=1e-12), name
                assert status is not FeatureStatus.MISSING, name
    assert new_devices >= 1, "the sample should include a card on a device it never used"


def test_loading_the_feature_services_reads_the_registry_once(caplog) -> None:
    # Each Feast lookup read the registry file again ("Registry cache expired, so refreshing" at info,
    # ten times per features replica at start), and the lookups could see different versions of it.
    caplog.set_level(logging.INFO, logger="feast")
    features = OnlineFeatures.of_registry(open_online_store(FeaturesSettings()))

    assert features.feature_services == (FEATURE_SERVICE,)
    refreshes = [r.getMessage() for r in caplog.records if "refreshing" in r.getMessage()]
    assert refreshes == []
