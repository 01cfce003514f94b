"""Translation between the business domain of the gateway's callers and the data domain of its upstreams.

This is where the card number stops: past `translate_transaction` there is only its keyed hash.
"""

from collections.abc import Sequence

from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2

from services.features.keys import card_id
from services.runtime.errors import FieldViolation

# The features API spells channels without the gateway's enum prefix, so that it does not depend on it.
_CHANNEL_NAMES = {
    number: gateway_pb2.Channel.Name(number).removeprefix("CHANNEL_")
    for number in gateway_pb2.Channel.values()
    if number != gateway_pb2.CHANNEL_UNSPECIFIED
}


def translate_transaction(
    tx: gateway_pb2.Transaction, card_key: str, feature_service: str
) -> features_pb2.GetFeaturesRequest:
    """The feature read for a validated transaction: entity keys and request-time values."""
    # A token is hashed like a number: either way the card's features are keyed by what the caller
    # consistently identifies the card with.
    card = tx.card_number if tx.WhichOneof("card") == "card_number" else tx.card_token
    return features_pb2.GetFeaturesRequest(
        feature_service=feature_service,
        entity_keys=features_pb2.EntityKeys(
            card_id=card_id(card, card_key), merchant_id=tx.merchant_id, device_id=tx.device_id
        ),
        request_values=features_pb2.RequestValues(
            amount_minor=tx.amount.amount_minor,
            currency_code=tx.amount.currency_code,
            event_time=tx.created_at,
            card_country=tx.card_country,
            merchant_country=tx.merchant_country,
            ip_country=tx.ip_country,
            channel=_CHANNEL_NAMES[tx.channel],
        ),
    )


#: Where each field of the feature read that comes from the caller's transaction comes from, as the
#: caller's code spells it. The entity key `card_id` is not here: it is a hash the gateway makes, which a
#: caller cannot get wrong, and neither is `feature_service`, the gateway's own setting.
_CALLERS_FIELDS = {
    "entity_keys.merchant_id": "transaction.merchant_id",
    "entity_keys.device_id": "transaction.device_id",
    "request_values.amount_minor": "transaction.amount.amount_minor",
    "request_values.currency_code": "transaction.amount.currency_code",
    "request_values.event_time": "transaction.created_at",
    "request_values.card_country": "transaction.card_country",
    "request_values.merchant_country": "transaction.merchant_country",
    "request_values.ip_country": "transaction.ip_country",
    "request_values.channel": "transaction.channel",
}


def callers_violations(violations: Sequence[FieldViolation]) -> list[FieldViolation] | None:
    """The features service's field violations of a feature read, each naming the caller's field it was
    translated from; None when there are none, or when any names a field the gateway made (the fault is
    then the gateway's, not the caller's)."""
    fields = [_CALLERS_FIELDS.get(violation.field) for violation in violations]
    if not violations or None in fields:
        return None
    return [
        FieldViolation(field, violation.description)
        for field, violation in zip(fields, violations, strict=True)
    ]


def summarize_features(response: features_pb2.GetFeaturesResponse) -> postprocess_pb2.FeatureSummary:
    """What the label policy needs to know about the feature read: counts and names by status."""
    present = 0
    missing = []
    stale = []
    for name, status in zip(response.feature_names, response.statuses, strict=True):
        if status == features_pb2.FEATURE_STATUS_PRESENT:
            present += 1
        elif status == features_pb2.FEATURE_STATUS_MISSING:
            missing.append(name)
        elif status == features_pb2.FEATURE_STATUS_STALE:
            stale.append(name)
    return postprocess_pb2.FeatureSummary(
        present_count=present,
        missing_count=len(missing),
        stale_count=len(stale),
        missing_features=missing,
        stale_features=stale,
    )
