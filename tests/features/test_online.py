import math
from datetime import UTC, datetime

import pytest
import yaml
from feast import FeatureService
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.Value_pb2 import Value

from services.features.aggregates import minor_to_usd
from services.features.feature_service import FEATURE_REPO
from services.features.online import (
    Column,
    EntityKeys,
    FeatureRequest,
    FeatureStatus,
    Freshness,
    RequestValues,
    ServedFeatureService,
    feature_state,
    redis_connection_string,
    repo_config,
    request_violations,
    vector_from_columns,
)
from services.features.settings import FeaturesSettings
from services.predict.contract import FeatureContract
from services.synthetic.transactions import USD_RATES

EVENT_MS = 1_800_000_000_000
DAY_MS = 86_400_000
STORED = Freshness(on_demand=False, ttl_ms=30 * DAY_MS)
ON_DEMAND = Freshness(on_demand=True, ttl_ms=None)
STORED_VALUE = Value(double_val=2.5)


def state(status=FieldStatus.PRESENT, value=STORED_VALUE, observed_ms=EVENT_MS - 1000, freshness=STORED):
    return feature_state(status, value, observed_ms, freshness, EVENT_MS)


@pytest.mark.parametrize("status", [FieldStatus.NOT_FOUND, FieldStatus.NULL_VALUE])
def test_a_value_feast_did_not_find_is_missing_not_filled(status) -> None:
    value, feature_status, age = state(status=status, value=Value())

    assert math.isnan(value)
    assert (feature_status, age) == (FeatureStatus.MISSING, -1)


@pytest.mark.parametrize("stored", [Value(), Value(double_val=math.nan)])
def test_a_stored_null_is_missing_though_feast_says_present(stored) -> None:
    value, feature_status, age = state(value=stored)

    assert math.isnan(value)
    assert (feature_status, age) == (FeatureStatus.MISSING, -1)


def test_a_value_within_the_ttl_is_present_with_its_age() -> None:
    assert state(observed_ms=EVENT_MS - 90_000) == (2.5, FeatureStatus.PRESENT, 90_000)


def test_a_value_exactly_ttl_old_is_still_present_as_in_the_offline_join() -> None:
    assert state(observed_ms=EVENT_MS - 30 * DAY_MS)[1] is FeatureStatus.PRESENT


def test_a_value_older_than_the_ttl_is_stale_and_keeps_its_value() -> None:
    assert state(observed_ms=EVENT_MS - 30 * DAY_MS - 1) == (2.5, FeatureStatus.STALE, 30 * DAY_MS + 1)


def test_a_view_without_ttl_never_goes_stale() -> None:
    forever = Freshness(on_demand=False, ttl_ms=None)

    assert state(observed_ms=0, freshness=forever) == (2.5, FeatureStatus.PRESENT, EVENT_MS)


def test_a_value_observed_after_the_event_reads_as_fresh() -> None:
    assert state(observed_ms=EVENT_MS + 5000) == (2.5, FeatureStatus.PRESENT, 0)


def test_an_on_demand_feature_is_present_with_age_zero_and_integers_become_floats() -> None:
    assert state(value=Value(int64_val=1), observed_ms=0, freshness=ON_DEMAND) == (
        1.0,
        FeatureStatus.PRESENT,
        0,
    )


def test_the_vector_follows_the_contract_order_not_the_reads() -> None:
    contract = FeatureContract("svc", ("count", "rate", "amount_log"))
    served = ServedFeatureService(
        FeatureService(name="svc", features=[]),
        contract,
        {"count": STORED, "rate": STORED, "amount_log": ON_DEMAND},
    )
    columns = {
        "amount_log": Column(FieldStatus.PRESENT, Value(double_val=0.7)),
        "rate": Column(FieldStatus.NOT_FOUND, Value()),
        "count": Column(FieldStatus.PRESENT, Value(double_val=3.0), EVENT_MS - 60_000),
    }
    event_time = datetime.fromtimestamp(EVENT_MS / 1000, UTC)

    vector = vector_from_columns(columns, served, event_time)

    assert vector.names == ("count", "rate", "amount_log")
    assert vector.values[0] == 3.0 and math.isnan(vector.values[1]) and vector.values[2] == 0.7
    assert vector.statuses == (FeatureStatus.PRESENT, FeatureStatus.MISSING, FeatureStatus.PRESENT)
    assert vector.ages_ms == (60_000, -1, 0)
    assert vector.status_counts() == {
        FeatureStatus.PRESENT: 2,
        FeatureStatus.MISSING: 1,
        FeatureStatus.STALE: 0,
    }


def request(**overrides) -> FeatureRequest:
    fields = {
        "feature_service": "fraud_model_v1",
        "keys": EntityKeys(card_id="card_1", merchant_id="m_1", device_id="d_1"),
        "values": RequestValues(amount_minor=1250, currency_code="EUR"),
        "event_time": datetime(2026, 11, 20, tzinfo=UTC),
        **overrides,
    }
    return FeatureRequest(**fields)


def test_a_complete_request_has_no_violations() -> None:
    assert request_violations(request(), {"fraud_model_v1"}) == []


def test_every_violation_is_reported_at_once_naming_the_callers_field() -> None:
    bad = request(
        feature_service="fraud_v9",
        keys=EntityKeys(card_id="", merchant_id="m_1"),
        values=RequestValues(amount_minor=100, currency_code="XXX"),
        event_time=None,
    )

    fields = [violation.field for violation in request_violations(bad, {"fraud_model_v1"})]

    assert fields == [
        "feature_service",
        "entity_keys.card_id",
        "request_values.currency_code",
        "request_values.event_time",
    ]


@pytest.mark.parametrize("currency", ["", "eur", "JPY"])
def test_a_currency_without_a_usd_rate_is_refused(currency) -> None:
    bad = request(values=RequestValues(amount_minor=100, currency_code=currency))

    [violation] = request_violations(bad, {"fraud_model_v1"})

    assert violation.field == "request_values.currency_code"
    # What it does convert, for the caller to see (the gateway passes it on); never the value sent.
    assert all(code in violation.description for code in USD_RATES)
    assert not currency or currency not in violation.description


def test_minor_units_convert_to_usd_as_the_offline_tables_do() -> None:
    assert minor_to_usd(1250, "EUR") == pytest.approx(12.50 / 0.92)
    assert minor_to_usd(1250, "USD") == 12.5


def test_the_sqlite_store_is_the_repositorys_own() -> None:
    config = repo_config(FeaturesSettings(online_store="sqlite"))

    assert config.online_store.type == "sqlite"
    assert config.online_store.path.endswith("data/feast/online_store.db")


def test_redis_replaces_only_the_online_store() -> None:
    sqlite = repo_config(FeaturesSettings(online_store="sqlite"))
    config = repo_config(FeaturesSettings(online_store="redis", redis_address="redis.internal:6380"))

    assert config.online_store.type == "redis"
    assert config.registry.path == sqlite.registry.path
    assert config.repo_path == FEATURE_REPO
    assert (
        yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())["online_store"]["type"] == "sqlite"
    )


def test_redis_reads_are_bounded_and_not_retried_unless_the_address_says_otherwise() -> None:
    startup_nodes, options = RedisOnlineStore._parse_connection_string(
        redis_connection_string(
            FeaturesSettings(
                redis_address="redis.internal:6380,password=s3cret,retry=3", redis_timeout_s=0.25
            )
        )
    )

    assert startup_nodes == [{"host": "redis.internal", "port": "6380"}]
    assert options == {
        "retry": 3,
        "socket_connect_timeout": 0.25,
        "socket_timeout": 0.25,
        "password": "s3cret",
    }
