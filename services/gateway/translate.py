"""Translation between the business domain of the gateway's callers and the data domain of its upstreams.

This is where the card number stops: past `translate_transaction` there is only its keyed hash.
"""

from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2

from services.features.keys import card_id

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
