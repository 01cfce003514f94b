import math
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from scoregraph.features.v1 import features_pb2

from services.features.codec import request_from_proto, response_from_vector
from services.features.online import (
    EntityKeys,
    FeatureRequest,
    FeatureStatus,
    FeatureVector,
    RequestValues,
)
from services.runtime.errors import InvalidInput

EVENT_TIME = datetime(2026, 11, 20, 15, 55, 55, 222000, tzinfo=UTC)


def test_a_request_becomes_the_domain_request_field_for_field() -> None:
    proto = features_pb2.GetFeaturesRequest(
        feature_service="fraud_model_v1",
        entity_keys=features_pb2.EntityKeys(card_id="card_1", merchant_id="m_1", device_id="d_1"),
        request_values=features_pb2.RequestValues(
            amount_minor=1250,
            currency_code="EUR",
            event_time=EVENT_TIME,
            card_country="DE",
            merchant_country="FR",
            ip_country="NL",
            channel="ONLINE",
        ),
    )

    assert request_from_proto(proto) == FeatureRequest(
        feature_service="fraud_model_v1",
        keys=EntityKeys(card_id="card_1", merchant_id="m_1", device_id="d_1"),
        values=RequestValues(1250, "EUR", "DE", "FR", "NL", "ONLINE"),
        event_time=EVENT_TIME,
    )


def test_an_unset_event_time_is_none_not_the_epoch() -> None:
    assert request_from_proto(features_pb2.GetFeaturesRequest()).event_time is None


def test_an_event_time_outside_the_timestamp_range_names_the_field() -> None:
    proto = features_pb2.GetFeaturesRequest(
        request_values=features_pb2.RequestValues(event_time=Timestamp(seconds=10**13))
    )

    with pytest.raises(InvalidInput) as raised:
        request_from_proto(proto)

    assert [violation.field for violation in raised.value.violations] == ["request_values.event_time"]


def test_a_vector_becomes_the_response_in_order() -> None:
    vector = FeatureVector(
        feature_service="fraud_model_v1",
        names=("txn_count_1h", "merchant_fraud_rate_30d", "amount_log"),
        values=(2.0, math.nan, 0.5),
        statuses=(FeatureStatus.STALE, FeatureStatus.MISSING, FeatureStatus.PRESENT),
        ages_ms=(90_000, -1, 0),
        event_time=EVENT_TIME,
    )

    response = response_from_vector(vector)

    assert response.feature_service == "fraud_model_v1"
    assert list(response.feature_names) == ["txn_count_1h", "merchant_fraud_rate_30d", "amount_log"]
    assert response.values[0] == 2.0 and math.isnan(response.values[1]) and response.values[2] == 0.5
    assert list(response.statuses) == [
        features_pb2.FEATURE_STATUS_STALE,
        features_pb2.FEATURE_STATUS_MISSING,
        features_pb2.FEATURE_STATUS_PRESENT,
    ]
    assert list(response.ages_ms) == [90_000, -1, 0]
    assert response.event_time.ToDatetime(tzinfo=UTC) == EVENT_TIME
