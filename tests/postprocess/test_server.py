from collections.abc import AsyncIterator

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from scoregraph.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc

from services.postprocess.policy import PolicyCatalogue
from services.postprocess.servicer import postprocess_registration
from services.postprocess.settings import PostprocessSettings
from services.runtime.server import GrpcServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICE_NAME = postprocess_pb2.DESCRIPTOR.services_by_name["PostprocessService"].full_name


@pytest.fixture
async def channel(shipped_policies: PolicyCatalogue) -> AsyncIterator[grpc.aio.Channel]:
    """The service as `python -m services.postprocess` runs it, on a free port and without the metrics
    endpoint, so tests never contend for fixed ports."""
    server = GrpcServer(
        PostprocessSettings(port=0, metrics_port=0, grace_period_s=1.0),
        [postprocess_registration(shipped_policies)],
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop()


async def test_label_round_trip_logs_one_event(channel: grpc.aio.Channel) -> None:
    stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)
    label_request = postprocess_pb2.LabelRequest(
        model_name="fraud_mlp",
        model_version="1",
        score=0.93,
        feature_summary=postprocess_pb2.FeatureSummary(
            present_count=19, missing_count=1, missing_features=["device_txn_count"]
        ),
    )

    with structlog.testing.capture_logs() as logs:
        response = await stub.Label(label_request, timeout=5)

    assert response.label == postprocess_pb2.LABEL_HIGHLY_SUSPICIOUS
    assert [(reason.code, reason.description) for reason in response.reasons] == [
        ("SCORE_ABOVE_HIGH_THRESHOLD", "score 0.93 >= 0.70"),
        ("NEW_DEVICE", "first time this card is used on this device"),
    ]
    assert response.policy_version
    [event] = [log for log in logs if log["event"] == "labelled"]
    assert event["log_level"] == "info"
    assert event["model"] == "fraud_mlp"
    assert event["label"] == "HIGHLY_SUSPICIOUS"
    assert event["reasons"] == ["SCORE_ABOVE_HIGH_THRESHOLD", "NEW_DEVICE"]


async def test_score_out_of_range_is_invalid_argument_naming_score(channel: grpc.aio.Channel) -> None:
    stub = postprocess_pb2_grpc.PostprocessServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Label(
            postprocess_pb2.LabelRequest(model_name="fraud_mlp", model_version="1", score=1.5), timeout=5
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == ["score"]


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    for service in ("", SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
