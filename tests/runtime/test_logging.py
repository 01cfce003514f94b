import logging

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logging import configure_logging
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
    "written", [TEST_PAN, "4111 1111 1111 1111", "4111-1111-1111-1111", f"pan={TEST_PAN}.", "411111111111111"]
)
def test_card_numbers_are_masked_in_the_event(json_logs: LogCapture, written: str) -> None:
    structlog.get_logger().info(f"request with {written}")

    assert_no_card_number(json_logs.text.replace(" ", "").replace("-", ""))
    assert "****" in json_logs.records()[0]["event"]


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
