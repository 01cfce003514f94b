"""Translation between the FeaturesService protos and the online read's domain types; nothing else."""

from datetime import UTC

from scoregraph.features.v1 import features_pb2

from services.features.online import (
    EntityKeys,
    FeatureRequest,
    FeatureStatus,
    FeatureVector,
    RequestValues,
)
from services.runtime.errors import FieldViolation, InvalidInput

_STATUS = {
    FeatureStatus.PRESENT: features_pb2.FEATURE_STATUS_PRESENT,
    FeatureStatus.MISSING: features_pb2.FEATURE_STATUS_MISSING,
    FeatureStatus.STALE: features_pb2.FEATURE_STATUS_STALE,
}


def request_from_proto(request: features_pb2.GetFeaturesRequest) -> FeatureRequest:
    keys, values = request.entity_keys, request.request_values
    event_time = None
    if values.HasField("event_time"):
        try:
            event_time = values.event_time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise InvalidInput(
                [FieldViolation("request_values.event_time", "outside the range of a Timestamp")]
            ) from None
    return FeatureRequest(
        feature_service=request.feature_service,
        keys=EntityKeys(card_id=keys.card_id, merchant_id=keys.merchant_id, device_id=keys.device_id),
        values=RequestValues(
            amount_minor=values.amount_minor,
            currency_code=values.currency_code,
            card_country=values.card_country,
            merchant_country=values.merchant_country,
            ip_country=values.ip_country,
            channel=values.channel,
        ),
        event_time=event_time,
    )


def response_from_vector(vector: FeatureVector) -> features_pb2.GetFeaturesResponse:
    response = features_pb2.GetFeaturesResponse(
        feature_service=vector.feature_service,
        feature_names=vector.names,
        values=vector.values,
        statuses=[_STATUS[status] for status in vector.statuses],
        ages_ms=vector.ages_ms,
    )
    response.event_time.FromDatetime(vector.event_time)
    return response
