"""Which field of a request body makes it undecodable, when one field does: text that is not UTF-8.

protobuf refuses a whole message when one of its `string` fields holds bytes that are not UTF-8 (a C++ or
hand-rolled client can send them), and says only "Error parsing message". The caller then hears that its
body is not a ScoreRequest at all. So, for a body its message type refuses, the same body is parsed again
as a twin of that type whose `string` fields are `bytes` (made once per type, in a pool of its own, by
protobuf's own descriptors and parser): if the twin takes it, the first field whose bytes are not UTF-8,
as the caller names it (`transaction.merchant_id`, `feature_summary.missing_features[2]`), is the answer.
A body the twin refuses too is broken in its framing (cut short, a wrong length), and has no field to name.

Only the field is named, never its bytes: the field may be a card number.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

from services.runtime.errors import FieldViolation

#: A body longer than this is not parsed again: scoregraph's requests are well under 1 KiB, and the search
#: runs on the event loop.
MAX_SEARCHED_BYTES = 64 * 1024
NOT_UTF8 = "is not valid UTF-8"


def undecodable_field(descriptor: Descriptor, body: bytes) -> FieldViolation | None:
    """The field of `body` (a `descriptor` message that protobuf refused) whose text is not UTF-8, or None
    when there is none to name (the body is broken in another way, or too long to search)."""
    if len(body) > MAX_SEARCHED_BYTES:
        return None
    twin = _twin_class(descriptor)
    if twin is None:
        return None
    try:
        return next(_not_utf8(descriptor, twin.FromString(body), ""), None)
    except Exception:  # noqa: BLE001 - naming the field is a courtesy: the body is refused all the same
        return None


def _not_utf8(descriptor: Descriptor, twin: Message, prefix: str) -> Iterator[FieldViolation]:
    """The fields of `twin` (parsed as the twin of `descriptor`) that are `string` in `descriptor` and hold
    bytes that are not UTF-8, in field order, nested messages searched in turn."""
    for twin_field, value in twin.ListFields():
        field = descriptor.fields_by_number[twin_field.number]
        path = f"{prefix}{field.name}"
        values = list(enumerate(value)) if field.is_repeated else [(None, value)]
        for index, item in values:
            named = path if index is None else f"{path}[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError:
                    yield FieldViolation(named, NOT_UTF8)
            elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
                yield from _not_utf8(field.message_type, item, f"{named}.")


@functools.cache
def _twin_class(descriptor: Descriptor) -> type[Message] | None:
    """The message class of `descriptor`'s twin: the same type, in a pool of its own, with every `string`
    field (of it and of the files it imports, a map's entries aside) made `bytes`. None when protobuf
    cannot build it."""
    pool = descriptor_pool.DescriptorPool()
    try:
        for file in _files_in_import_order(descriptor.file):
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            for message in _messages(proto.message_type):
                if message.options.map_entry:
                    continue  # a map's keys cannot be bytes: a map's text stays text (and unnamed)
                for field in message.field:
                    if field.type == FieldDescriptor.TYPE_STRING:
                        field.type = FieldDescriptor.TYPE_BYTES
                        field.ClearField("default_value")
            pool.Add(proto)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.full_name))
    except (TypeError, ValueError, KeyError):
        return None


def _files_in_import_order(file: FileDescriptor) -> list[FileDescriptor]:
    """`file` and every file it imports, each after the files it imports."""
    ordered: list[FileDescriptor] = []

    def visit(each: FileDescriptor) -> None:
        if each in ordered:
            return
        for dependency in each.dependencies:
            visit(dependency)
        ordered.append(each)

    visit(file)
    return ordered


def _messages(messages: list[descriptor_pb2.DescriptorProto]) -> Iterator[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _messages(message.nested_type)
