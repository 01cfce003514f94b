import logging
import re

import pytest
import structlog
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logging import WITHHELD, TraceHeaderWarnings, configure_logging
from tests.runtime.conftest import LogCapture

TEST_PAN = "4111111111111111"


def assert_no_card_number(text: str) -> None:
    assert TEST_PAN not in text
    assert TEST_PAN[-12:] not in text


def test_every_line_is_json_with_the_common_keys(json_logs: LogCapture) -> None:
    structlog.get_logger("scoregraph.test").info("scored", verdict="VERDICT_NOT_FRAUD")
    logging.getLogger("grpc.test").warning("from the standard library")

    scored, foreign = json_logs.records()
    assert scored["event"] == "scored"
    assert scored["verdict"] == "VERDICT_NOT_FRAUD"
    for record in (scored, foreign):
        assert record.keys() >= {"timestamp", "level", "service", "event"}
        assert record["service"] == "test-service"
    assert foreign["level"] == "warning"


def test_the_configured_level_filters_both_paths(json_logs: LogCapture) -> None:
    configure_logging("info", service="test-service", stream=json_logs.stream)

    structlog.get_logger().debug("noise")
    logging.getLogger("grpc.test").debug("noise")
    structlog.get_logger().info("signal")

    assert [record["event"] for record in json_logs.records()] == ["signal"]


def test_lines_carry_the_current_span_ids(json_logs: LogCapture) -> None:
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("score") as span:
        structlog.get_logger().info("inside")
    structlog.get_logger().info("outside")

    inside, outside = json_logs.records()
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside


@pytest.mark.parametrize(
    "written",
    [
        TEST_PAN,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        f"pan={TEST_PAN}.",
        "411111111111111",
        # Before, these came out whole: a longer run of digits, other separators, doubled ones.
        f"{TEST_PAN}1700000000",
        "4111.1111.1111.1111",
        "ord_4111_1111_1111_1111",
        "4111  1111  1111  1111",
        "4111/1111/1111/1111",
        "4111 - 1111 - 1111 - 1111",
        "4111\t1111\t1111\t1111",
        "4111,1111,1111,1111",
        "4111:1111:1111:1111",
    ],
)
def test_card_numbers_are_masked_in_the_event(json_logs: LogCapture, written: str) -> None:
    structlog.get_logger().info(f"request with {written}")

    event = json_logs.records()[0]["event"]
    assert_no_card_number(re.sub(r"[^0-9*]", "", event))  # the digits as they were, whatever between them
    assert "****" in event


@pytest.mark.parametrize(
    ("written", "logged"),
    [
        ("t-1 cvv=937", "t-1 cvv=[redacted]"),
        ("CVV 937 given", "CVV [redacted] given"),
        ("pin: 1234, ok", "pin: [redacted], ok"),
        ("password=hunter2 next", "password=[redacted] next"),
        ("spin=3 pinned=4 pin number", "spin=3 pinned=4 pin number"),
        # As a dict or JSON written out as text.
        ("{'cvv': '937', 'x': 1}", "{'cvv': '[redacted]', 'x': 1}"),
        ('{"password": "hunter2"}', '{"password": "[redacted]"}'),
        ("card_pin=1234", "card_pin=[redacted]"),
    ],
)
def test_secrets_named_in_the_text_lose_their_value(json_logs: LogCapture, written: str, logged: str) -> None:
    structlog.get_logger().info("scored", transaction_id=written, cvv2="937", body={"pin": "1234", "n": 1})

    [record] = json_logs.records()
    assert record["transaction_id"] == logged
    assert record["cvv2"] == "[redacted]"
    assert record["body"] == {"pin": "[redacted]", "n": 1}


@pytest.mark.parametrize(
    ("written", "logged"),
    [
        ("198.51.100.7", "198.51.100.*"),
        ("10.0.0.7:8001", "10.0.0.7:8001"),  # infrastructure
        ("2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3:*"),
        # Before, an address written from `::` came out whole, and leading zeros (which ipaddress refuses)
        # escaped the mask or broke the line.
        ("ip ::ffff:c633:6407", "ip ::ffff:198.51.100.*"),
        ("::ffff:198.51.100.7", "::ffff:198.51.100.*"),
        ("::2:3:4", "::*"),
        ("bound to [::]:50051 and ::1", "bound to [::]:50051 and ::1"),
        ("198.051.100.7", "198.051.100.*"),
        ("01.1.1.1", "01.1.1.*"),
        ("at 12:30:45", "at 12:30:45"),
    ],
)
def test_ip_addresses_keep_their_network_alone(json_logs: LogCapture, written: str, logged: str) -> None:
    structlog.get_logger().info("scored", transaction_id=written)

    assert json_logs.records()[0]["transaction_id"] == logged


def test_card_numbers_are_masked_in_nested_and_foreign_values(json_logs: LogCapture) -> None:
    class Request:
        def __repr__(self) -> str:
            return f"Request(card_number={TEST_PAN})"

    structlog.get_logger().info("bound", request={"cards": [TEST_PAN]}, raw=Request())
    logging.getLogger("feast").error("lookup of %s failed", TEST_PAN)

    assert_no_card_number(json_logs.text)
    assert json_logs.records()[0]["request"] == {"cards": ["****1111"]}


def test_tracebacks_hold_neither_card_numbers_nor_locals(json_logs: LogCapture) -> None:
    card_number = TEST_PAN
    try:
        raise ValueError(f"cannot hash {card_number}")
    except ValueError:
        structlog.get_logger().exception("failed")

    [record] = json_logs.records()
    assert_no_card_number(json_logs.text)
    [exception] = record["exception"]
    assert exception["exc_type"] == "ValueError"
    assert all("locals" not in frame for frame in exception["frames"])


def test_short_digit_runs_and_numbers_survive(json_logs: LogCapture) -> None:
    structlog.get_logger().info("scored", transaction_id="tx-2024-000042", created_at_ms=1732185600000)

    [record] = json_logs.records()
    assert record["transaction_id"] == "tx-2024-000042"
    assert record["created_at_ms"] == 1732185600000


# A caller's secret, in trace-header members OpenTelemetry's propagators reject and warn of.
CALLER_SECRET = "9Qx7Zp-hunter2"
MALFORMED_HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": f"vendor=ok,pin {CALLER_SECRET}",
    "baggage": f"user=alice,pin {CALLER_SECRET},token={CALLER_SECRET} x,{CALLER_SECRET}=" + "y" * 5000,
}


def test_warnings_of_a_callers_malformed_trace_headers_withhold_their_text(json_logs: LogCapture) -> None:
    propagate.extract(MALFORMED_HEADERS)
    propagate.extract({"baggage": f"k={CALLER_SECRET}" + "x" * 9000})

    assert CALLER_SECRET not in json_logs.text
    events = [record["event"] for record in json_logs.records()]
    assert {record["level"] for record in json_logs.records()} == {"warning"}
    assert f"Member doesn't match the w3c identifiers format {WITHHELD}" in events
    assert f"Baggage list-member `{WITHHELD}` doesn't match the format" in events
    assert f"Invalid baggage entry: `{WITHHELD}`" in events
    # Numbers stay: they say what was wrong without quoting the caller.
    too_long = len(f"{CALLER_SECRET}=") + 5000
    assert any(event.endswith(f"per list-member with length {too_long}") for event in events)
    assert f"Baggage header `{WITHHELD}` exceeded the maximum number of bytes per baggage-string" in events


def test_a_caller_repeating_malformed_trace_headers_gets_one_line_per_kind(json_logs: LogCapture) -> None:
    for _ in range(50):
        propagate.extract(MALFORMED_HEADERS)

    events = [record["event"] for record in json_logs.records()]
    assert len(events) == len(set(events)) == 4


def test_trace_header_warnings_come_once_an_interval_saying_how_many_were_held_back() -> None:
    now = [100.0]
    warnings = TraceHeaderWarnings(interval_s=10.0, clock=lambda: now[0])

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    entry = "Invalid baggage entry: `%s`"
    seen = []
    for at in (100.0, 101.0, 109.9, 110.0, 111.0):
        now[0] = at
        line = record("opentelemetry.baggage.propagation", entry, CALLER_SECRET)
        if warnings.filter(line):
            seen.append((at, line.getMessage()))
    # Another kind, and the same one from another logger, are not held back.
    other = record("opentelemetry.trace.span", "There can't be more than %s key/value pairs.", 32)
    assert warnings.filter(other)
    assert other.getMessage() == "There can't be more than 32 key/value pairs."
    own = record("scoregraph.gateway", entry, "kept")
    assert warnings.filter(own) and warnings.filter(own)
    assert own.getMessage() == "Invalid baggage entry: `kept`"

    assert seen == [
        (100.0, f"Invalid baggage entry: `{WITHHELD}`"),
        (110.0, f"Invalid baggage entry: `{WITHHELD}` (2 more like it since the last)"),
    ]


def test_a_value_that_cannot_be_redacted_is_withheld_and_the_call_goes_on(
    json_logs: LogCapture, monkeypatch
) -> None:
    def broken(text: str) -> str:
        if "4111" in text:
            raise ValueError(f"cannot parse {text}")
        return text

    monkeypatch.setattr("services.runtime.logging._redact_text", broken)

    structlog.get_logger().info("scored", transaction_id=TEST_PAN, verdict="NOT_FRAUD")  # does not raise

    [record] = json_logs.records()
    assert record["transaction_id"] == "[withheld: redaction failed, ValueError]"
    assert (record["event"], record["verdict"], record["service"]) == ("scored", "NOT_FRAUD", "test-service")
    assert_no_card_number(json_logs.text)


SCORE_METHOD = "/scoregraph.gateway.v1.GatewayService/Score"


def test_grpcs_error_for_a_response_too_late_to_send_becomes_an_info_line(json_logs: LogCapture) -> None:
    # As grpc.aio logs it (server.pyx.pxi, _handle_exceptions) when a servicer answers a call whose
    # deadline passed a moment before: an error line with the traceback, though the caller already has its
    # DEADLINE_EXCEEDED. grpc formats the method into the message itself.
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    try:
        raise RuntimeError('Failed "execute_batch": (SendStatusFromServerOperation,)')
    except RuntimeError:
        grpc_logger.exception(f"ExecuteBatchError raised in core by servicer method [{SCORE_METHOD}]")
    grpc_logger.error("another error")

    late, other = json_logs.records()
    assert late["event"] == f"response not sent: the call had ended before it was answered [{SCORE_METHOD}]"
    assert late["level"] == "info"
    assert "exception" not in late
    assert (other["event"], other["level"]) == ("another error", "error")
