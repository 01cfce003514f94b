import math

from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.features.keys import card_id
from services.gateway.translate import summarize_features, translate_transaction
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
