"""A body protobuf refuses for text that is not UTF-8 is answered with the field that holds it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2

from services.runtime.decoding import MAX_SEARCHED_BYTES, NOT_UTF8, undecodable_field
from services.runtime.errors import FieldViolation

REQUESTS = [gateway_pb2.ScoreRequest, features_pb2.GetFeaturesRequest, postprocess_pb2.LabelRequest]


def _filled(descriptor: Descriptor, message: Message, prefix: str, texts: dict[str, str]) -> None:
    """Every string field of `message` set to a text of its own (two items of a repeated one), recorded in
    `texts` by the field's path; nested messages filled the same way."""
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if field.containing_oneof is not None and field.containing_oneof.fields[0] is not field:
            continue  # one member of a oneof: the first
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for index in range(2):
                    text = texts[f"{path}[{index}]"] = f"<{len(texts):04d}>"
                    getattr(message, field.name).append(text)
            else:
                text = texts[path] = f"<{len(texts):04d}>"
                setattr(message, field.name, text)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name.startswith(
            "scoregraph"
        ):
            if field.is_repeated:
                for index in range(2):
                    _filled(
                        field.message_type, getattr(message, field.name).add(), f"{path}[{index}].", texts
                    )
            else:
                _filled(field.message_type, getattr(message, field.name), f"{path}.", texts)


def _string_fields() -> Iterator[tuple[type[Message], str, bytes, str]]:
    """(request type, field path, body with that field's text not UTF-8, its text) for every string field
    of every request a scoregraph service takes."""
    for request_type in REQUESTS:
        message = request_type()
        texts: dict[str, str] = {}
        _filled(request_type.DESCRIPTOR, message, "", texts)
        body = message.SerializeToString()
        for path, text in texts.items():
            # The same length: the lengths framing it stay right.
            yield request_type, path, body.replace(text.encode(), b"<\xff\xfe-->"), text


STRING_FIELDS = list(_string_fields())


def test_every_request_has_its_string_fields_searched():
    paths = {path for _, path, _, _ in STRING_FIELDS}
    assert {
        "transaction.transaction_id",
        "transaction.card_number",
        "transaction.amount.currency_code",
        "entity_keys.card_id",
        "request_values.channel",
        "feature_summary.missing_features[1]",
        "failed_hops[1].hop",
    } <= paths


@pytest.mark.parametrize(
    ("request_type", "path", "body", "text"),
    STRING_FIELDS,
    ids=[f"{r.DESCRIPTOR.name}.{path}" for r, path, _, _ in STRING_FIELDS],
)
def test_the_field_whose_text_is_not_utf8_is_named(request_type, path: str, body: bytes, text: str):
    with pytest.raises(DecodeError):
        request_type.FromString(body)

    assert undecodable_field(request_type.DESCRIPTOR, body) == FieldViolation(path, NOT_UTF8)


def test_of_two_such_fields_the_first_is_named():
    request = gateway_pb2.ScoreRequest()
    request.transaction.transaction_id = "<a>"
    request.transaction.merchant_id = "<b>"
    request.transaction.amount.currency_code = "<c>"
    body = request.SerializeToString().replace(b"<c>", b"\xc3\x28c").replace(b"<b>", b"\xed\xa0\x80")

    assert undecodable_field(gateway_pb2.ScoreRequest.DESCRIPTOR, body) == FieldViolation(
        "transaction.merchant_id", NOT_UTF8
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # a varint that never ends
        b"\x0a\x05abc",  # a length past the end
        b"\x0a\x03\x0a\x02\xc3",  # a nested length past its message's end
        b"\x0a\x04\x0a\x02\xc3\x28" + b"\x0b",  # bad text, then a group that never ends: broken framing wins
    ],
)
def test_a_body_broken_in_its_framing_has_no_field_to_name(body: bytes):
    with pytest.raises(DecodeError):
        gateway_pb2.ScoreRequest.FromString(body)

    assert undecodable_field(gateway_pb2.ScoreRequest.DESCRIPTOR, body) is None


def test_a_body_longer_than_searched_has_no_field_named():
    def body(size: int) -> bytes:
        request = gateway_pb2.ScoreRequest()
        request.transaction.transaction_id = "<a>"
        request.transaction.merchant_id = "m" * size
        return request.SerializeToString().replace(b"<a>", b"\xff\xff\xff")

    assert len(body(MAX_SEARCHED_BYTES)) > MAX_SEARCHED_BYTES
    assert undecodable_field(gateway_pb2.ScoreRequest.DESCRIPTOR, body(MAX_SEARCHED_BYTES)) is None
    assert undecodable_field(gateway_pb2.ScoreRequest.DESCRIPTOR, body(MAX_SEARCHED_BYTES - 100)) == (
        FieldViolation("transaction.transaction_id", NOT_UTF8)
    )


def test_text_in_a_map_is_not_named_and_nothing_breaks():
    value = struct_pb2.Struct()
    value.fields["<k>"].string_value = "v"
    body = value.SerializeToString().replace(b"<k>", b"\xff\xff\xff")
    with pytest.raises(DecodeError):
        struct_pb2.Struct.FromString(body)

    assert undecodable_field(struct_pb2.Struct.DESCRIPTOR, body) is None
