import contextlib
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from scoregraph.features.v1 import features_pb2, features_pb2_grpc

from services.features.feature_service import contract_of
from services.features.servicer import features_registration
from services.features.settings import FeaturesSettings
from services.runtime.server import GrpcServer
from tests.features.known_entities import FEATURE_SERVICE, KnownTransaction

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeaturesService"].full_name


@pytest.fixture(scope="module", params=[0, 2], ids=["reads-on-loop", "reads-in-threads"])
async def channel(request, sqlite_features) -> AsyncIterator[grpc.aio.Channel]:
    """The features service on the built SQLite store, served by the runtime's server on a free port."""
    settings = FeaturesSettings(port=0, metrics_port=0, grace_period_s=1.0, read_threads=request.param)
    with contextlib.ExitStack() as stack:
        threads = settings.online_read_threads
        reads = stack.enter_context(ThreadPoolExecutor(threads)) if threads else None
        server = GrpcServer(settings, [features_registration(sqlite_features, reads)])
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield channel
        finally:
            await channel.close()
            await server.stop()


def get_features_request(known: KnownTransaction, **changes) -> features_pb2.GetFeaturesRequest:
    request = features_pb2.GetFeaturesRequest(
        feature_service=FEATURE_SERVICE,
        entity_keys=features_pb2.EntityKeys(
            card_id=known.card_id, merchant_id=known.merchant_id, device_id=known.device_id
        ),
        request_values=features_pb2.RequestValues(
            amount_minor=1250,
            currency_code="EUR",
            event_time=known.materialized_until,
            card_country="DE",
            merchant_country="DE",
            ip_country="DE",
            channel="ONLINE",
        ),
    )
    for path, value in changes.items():
        message, _, field = path.rpartition(".")
        target = getattr(request, message) if message else request
        if value is None:
            target.ClearField(field)
        else:
            setattr(target, field, value)
    return request


async def test_health_reports_the_service_serving(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    response = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_known_card_gets_its_vector_in_contract_order(
    channel, sqlite_features, known_transactions
) -> None:
    known = known_transactions[0]
    stub = features_pb2_grpc.FeaturesServiceStub(channel)

    response = await stub.GetFeatures(get_features_request(known), timeout=5)

    contract = contract_of(sqlite_features.store, FEATURE_SERVICE)
    assert response.feature_service == FEATURE_SERVICE
    assert tuple(response.feature_names) == contract.feature_names
    assert list(response.statuses) == [features_pb2.FEATURE_STATUS_PRESENT] * contract.width
    stored = known.latest["card_activity"]
    assert response.values[0] == pytest.approx(stored["txn_count_1h"])
    assert len(response.values) == len(response.ages_ms) == contract.width
    assert response.event_time.ToDatetime(tzinfo=known.materialized_until.tzinfo) == known.materialized_until


async def test_an_unknown_card_gets_missing_features_not_an_error(channel, known_transactions) -> None:
    stub = features_pb2_grpc.FeaturesServiceStub(channel)
    request = get_features_request(known_transactions[0], **{"entity_keys.card_id": "card_never_seen"})

    response = await stub.GetFeatures(request, timeout=5)

    first = list(response.feature_names).index("txn_count_1h")
    assert math.isnan(response.values[first])
    assert (response.statuses[first], response.ages_ms[first]) == (features_pb2.FEATURE_STATUS_MISSING, -1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"entity_keys.card_id": ""}, "entity_keys.card_id"),
        ({"feature_service": "fraud_model_v9"}, "feature_service"),
        ({"request_values.currency_code": "XXX"}, "request_values.currency_code"),
        ({"request_values.event_time": None}, "request_values.event_time"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    channel, known_transactions, change, field
) -> None:
    stub = features_pb2_grpc.FeaturesServiceStub(channel)

    call = stub.GetFeatures(get_features_request(known_transactions[0], **change), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    [detail] = (await rpc_status.aio.from_call(call)).details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == [field]


async def test_each_read_logs_counts_and_latency_but_no_keys(channel, known_transactions) -> None:
    stub = features_pb2_grpc.FeaturesServiceStub(channel)
    request = get_features_request(known_transactions[0], **{"entity_keys.card_id": "card_never_seen"})

    with structlog.testing.capture_logs() as logs:
        await stub.GetFeatures(request, timeout=5)

    [entry] = [entry for entry in logs if entry["event"] == "features read"]
    assert entry["feature_service"] == FEATURE_SERVICE
    assert (entry["present"], entry["missing"], entry["stale"]) == (11, 9, 0)
    assert entry["latency_ms"] > 0
    assert "card_never_seen" not in repr(entry)
