import math

import pytest
from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.features.keys import card_id
from services.gateway.translate import (
    _CALLERS_FIELDS,
    callers_violations,
    summarize_features,
    translate_transaction,
)
from services.runtime.errors import FieldViolation
from tests.gateway.transactions import TEST_PAN, valid_request

CARD_KEY = "test-card-key"


def test_carries_entity_keys_and_request_values() -> None:
    tx = valid_request().transaction

    request = translate_transaction(tx, CARD_KEY, "fraud_v1")

    assert request.feature_service == "fraud_v1"
    assert request.entity_keys == features_pb2.EntityKeys(
        card_id=card_id(TEST_PAN, CARD_KEY), merchant_id="mer-42", device_id="dev-9"
    )
    assert request.request_values == features_pb2.RequestValues(
        amount_minor=1234,
        currency_code="EUR",
        event_time=tx.created_at,
        card_country="DE",
        merchant_country="FR",
        ip_country="DE",
        channel="ONLINE",
    )


def test_the_card_number_goes_no_further() -> None:
    serialized = translate_transaction(valid_request().transaction, CARD_KEY, "fraud_v1").SerializeToString()

    assert TEST_PAN.encode() not in serialized
    assert TEST_PAN[-8:].encode() not in serialized


def test_a_card_token_is_keyed_like_a_card_number() -> None:
    request = translate_transaction(valid_request(card_token="tok_1").transaction, CARD_KEY, "fraud_v1")

    assert request.entity_keys.card_id == card_id("tok_1", CARD_KEY)
    assert b"tok_1" not in request.SerializeToString()


def test_the_card_key_changes_the_entity_key() -> None:
    tx = valid_request().transaction

    assert (
        translate_transaction(tx, CARD_KEY, "f").entity_keys.card_id
        != translate_transaction(tx, "another-key", "f").entity_keys.card_id
    )


def test_every_channel_has_the_features_apis_spelling() -> None:
    spelled = {
        channel: translate_transaction(
            valid_request(channel=channel).transaction, CARD_KEY, "f"
        ).request_values.channel
        for channel in gateway_pb2.Channel.values()
        if channel != gateway_pb2.CHANNEL_UNSPECIFIED
    }

    assert spelled == {
        gateway_pb2.CHANNEL_ONLINE: "ONLINE",
        gateway_pb2.CHANNEL_IN_STORE: "IN_STORE",
        gateway_pb2.CHANNEL_MOBILE_APP: "MOBILE_APP",
        gateway_pb2.CHANNEL_MAIL_OR_TELEPHONE_ORDER: "MAIL_OR_TELEPHONE_ORDER",
    }


def test_feature_summary_counts_and_names_by_status_in_model_order() -> None:
    response = features_pb2.GetFeaturesResponse(
        feature_names=["a", "b", "c", "d", "e"],
        values=[1.0, math.nan, 3.0, math.nan, 5.0],
        statuses=[
            features_pb2.FEATURE_STATUS_PRESENT,
            features_pb2.FEATURE_STATUS_MISSING,
            features_pb2.FEATURE_STATUS_STALE,
            features_pb2.FEATURE_STATUS_MISSING,
            features_pb2.FEATURE_STATUS_PRESENT,
        ],
    )

    summary = summarize_features(response)

    assert (summary.present_count, summary.missing_count, summary.stale_count) == (2, 2, 1)
    assert list(summary.missing_features) == ["b", "d"]
    assert list(summary.stale_features) == ["c"]


def _field(message, path: str):
    for name in path.split("."):
        message = getattr(message, name)
    return message


def test_the_features_services_violations_name_the_callers_fields() -> None:
    violations = [
        FieldViolation("request_values.currency_code", "not a currency the features service converts"),
        FieldViolation("request_values.event_time", "required"),
    ]

    assert callers_violations(violations) == [
        FieldViolation("transaction.amount.currency_code", "not a currency the features service converts"),
        FieldViolation("transaction.created_at", "required"),
    ]


@pytest.mark.parametrize(
    "fields",
    [[], ["feature_service"], ["entity_keys.card_id"], ["request_values.currency_code", "feature_service"]],
)
def test_a_violation_of_a_field_the_gateway_made_is_none_of_the_callers(fields: list[str]) -> None:
    assert callers_violations([FieldViolation(field, "wrong") for field in fields]) is None


@pytest.mark.parametrize("features_field", sorted(_CALLERS_FIELDS))
def test_each_field_named_the_callers_is_translated_from_it(features_field: str) -> None:
    request = valid_request()
    before = translate_transaction(request.transaction, "key", "svc")
    callers_path = _CALLERS_FIELDS[features_field].removeprefix("transaction.")
    *parents, leaf = callers_path.split(".")
    owner = _field(request.transaction, ".".join(parents)) if parents else request.transaction
    value = getattr(owner, leaf)
    if isinstance(value, str):
        setattr(owner, leaf, value + "X")
    elif isinstance(value, int):
        setattr(owner, leaf, value % 3 + 1 if leaf == "channel" else value + 1)
    else:
        value.seconds += 1

    after = translate_transaction(request.transaction, "key", "svc")

    assert _field(after, features_field) != _field(before, features_field)
