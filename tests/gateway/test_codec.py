import pytest
from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2

from services.gateway.assessment import Assessment, Reason, Verdict
from services.gateway.codec import UnknownLabel, decode_label, encode_score_response


@pytest.mark.parametrize(
    ("label", "verdict"),
    [
        (postprocess_pb2.LABEL_NOT_FRAUD, gateway_pb2.VERDICT_NOT_FRAUD),
        (postprocess_pb2.LABEL_SUSPICIOUS, gateway_pb2.VERDICT_SUSPICIOUS),
        (postprocess_pb2.LABEL_HIGHLY_SUSPICIOUS, gateway_pb2.VERDICT_HIGHLY_SUSPICIOUS),
        (postprocess_pb2.LABEL_UNCERTAIN, gateway_pb2.VERDICT_UNCERTAIN),
    ],
)
def test_every_label_maps_to_its_verdict(label: int, verdict: int) -> None:
    decoded, _ = decode_label(postprocess_pb2.LabelResponse(label=label))

    response = encode_score_response(
        Assessment("tx", decoded, 0.5, "m", "1", (), degraded=False, trace_id="0" * 32)
    )

    assert response.verdict == verdict


@pytest.mark.parametrize("label", [postprocess_pb2.LABEL_UNSPECIFIED, 42])
def test_a_label_without_a_verdict_is_refused(label: int) -> None:
    with pytest.raises(UnknownLabel):
        decode_label(postprocess_pb2.LabelResponse(label=label))


def test_reasons_keep_their_order() -> None:
    _, reasons = decode_label(
        postprocess_pb2.LabelResponse(
            label=postprocess_pb2.LABEL_SUSPICIOUS,
            reasons=[postprocess_pb2.Reason(code="A", description="a"), postprocess_pb2.Reason(code="B")],
        )
    )

    assert reasons == (Reason("A", "a"), Reason("B", ""))


def test_no_score_leaves_the_field_unset() -> None:
    response = encode_score_response(
        Assessment("tx", Verdict.UNCERTAIN, None, "", "", (Reason("X", "x"),), True, "ab" * 16)
    )

    assert not response.HasField("score")
    assert response == gateway_pb2.ScoreResponse(
        transaction_id="tx",
        verdict=gateway_pb2.VERDICT_UNCERTAIN,
        reasons=[gateway_pb2.Reason(code="X", description="x")],
        degraded=True,
        trace_id="ab" * 16,
    )
