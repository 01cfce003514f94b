import time

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from scoregraph.gateway.v1 import gateway_pb2

from services.gateway.validation import CreatedAtWindow, validate_score_request
from services.runtime.errors import InvalidInput
from tests.gateway.transactions import TEST_PAN, valid_request

WINDOW = CreatedAtWindow(max_future_s=300, max_age_s=7 * 24 * 3600)


def violations(request: gateway_pb2.ScoreRequest) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as raised:
        validate_score_request(request, now=time.time(), window=WINDOW)
    return [(violation.field, violation.description) for violation in raised.value.violations]


def at(offset_s: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns() + int(offset_s * 1e9))
    return stamp


def without(field: str) -> gateway_pb2.ScoreRequest:
    request = valid_request()
    request.transaction.ClearField(field)
    return request


def with_money(amount_minor: int = 1234, currency_code: str = "EUR") -> gateway_pb2.ScoreRequest:
    return valid_request(amount=gateway_pb2.Money(amount_minor=amount_minor, currency_code=currency_code))


def test_a_well_formed_request_passes() -> None:
    validate_score_request(valid_request(), now=time.time(), window=WINDOW)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(valid_request(card_token="tok_9f8e7d"), id="card token"),
        pytest.param(valid_request(card_number="378282246310005"), id="15-digit card"),
        pytest.param(valid_request(card_number="4" + "0" * 11 + "6"), id="13-digit card"),
        pytest.param(valid_request(ip_address="2001:db8::7"), id="IPv6"),
        pytest.param(valid_request(ip_address="", ip_country="", device_id=""), id="in store, no device"),
        pytest.param(valid_request(channel=gateway_pb2.CHANNEL_MAIL_OR_TELEPHONE_ORDER), id="MOTO"),
        pytest.param(with_money(currency_code="JPY"), id="JPY"),
        pytest.param(valid_request(created_at=at(200)), id="caller clock ahead"),
        pytest.param(valid_request(created_at=at(-6 * 24 * 3600)), id="six days old"),
        pytest.param(valid_request(transaction_id="x" * 128), id="longest transaction id"),
        pytest.param(valid_request(merchant_id=" café du monde "), id="spaces and accents"),
        pytest.param(valid_request(customer_id="顧客-42"), id="CJK"),
        pytest.param(valid_request(ip_address="::ffff:198.51.100.7"), id="IPv4 mapped into IPv6"),
    ],
)
def test_valid_variants_pass(request_: gateway_pb2.ScoreRequest) -> None:
    validate_score_request(request_, now=time.time(), window=WINDOW)


def test_a_missing_transaction_is_named() -> None:
    assert [field for field, _ in violations(gateway_pb2.ScoreRequest())] == ["transaction"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (valid_request(transaction_id=""), "transaction.transaction_id"),
        (valid_request(transaction_id="x" * 129), "transaction.transaction_id"),
        (valid_request(transaction_id="tx\n1"), "transaction.transaction_id"),
        # Before, blanks or combining marks alone passed, and a blank card token was hashed to one card.
        (valid_request(transaction_id=" "), "transaction.transaction_id"),
        (valid_request(customer_id=" " * 128), "transaction.customer_id"),
        (valid_request(merchant_id="\u0301"), "transaction.merchant_id"),
        (valid_request(card_token="\u0301 "), "transaction.card_token"),
        (valid_request(device_id="\u3164\u2800"), "transaction.device_id"),
        (without("card_number"), "transaction.card_number"),
        (valid_request(card_number=""), "transaction.card_number"),
        (valid_request(card_number="41111111111"), "transaction.card_number"),  # 11 digits
        (valid_request(card_number="4" * 20), "transaction.card_number"),
        (valid_request(card_number="4111 1111 1111 1111"), "transaction.card_number"),
        (valid_request(card_number="4111-1111-1111-1111"), "transaction.card_number"),
        (
            valid_request(card_number="４１１１１１１１１１１１１１１１"),
            "transaction.card_number",
        ),  # fullwidth
        (valid_request(card_number="4111111111111112"), "transaction.card_number"),  # Luhn
        (valid_request(card_token=""), "transaction.card_token"),
        (valid_request(card_token="t" * 129), "transaction.card_token"),
        (valid_request(customer_id=""), "transaction.customer_id"),
        (valid_request(customer_id="c" * 129), "transaction.customer_id"),
        (valid_request(merchant_id=""), "transaction.merchant_id"),
        (valid_request(merchant_id="m" * 129), "transaction.merchant_id"),
        (valid_request(merchant_category_code=""), "transaction.merchant_category_code"),
        (valid_request(merchant_category_code="541"), "transaction.merchant_category_code"),
        (valid_request(merchant_category_code="54111"), "transaction.merchant_category_code"),
        (valid_request(merchant_category_code="54a1"), "transaction.merchant_category_code"),
        (without("amount"), "transaction.amount"),
        (with_money(amount_minor=-1), "transaction.amount.amount_minor"),
        (with_money(amount_minor=0), "transaction.amount.amount_minor"),
        (with_money(amount_minor=10**12), "transaction.amount.amount_minor"),
        (with_money(currency_code=""), "transaction.amount.currency_code"),
        (with_money(currency_code="eur"), "transaction.amount.currency_code"),
        (with_money(currency_code="EURO"), "transaction.amount.currency_code"),
        (with_money(currency_code="ABC"), "transaction.amount.currency_code"),
        (with_money(currency_code="XXX"), "transaction.amount.currency_code"),
        (without("created_at"), "transaction.created_at"),
        # Well past the 300 s allowed: parameters are built at collection, minutes before the test runs.
        (valid_request(created_at=at(3600)), "transaction.created_at"),
        (valid_request(created_at=at(-8 * 24 * 3600)), "transaction.created_at"),
        (valid_request(created_at=Timestamp(seconds=int(time.time()), nanos=-1)), "transaction.created_at"),
        (valid_request(channel=gateway_pb2.CHANNEL_UNSPECIFIED), "transaction.channel"),
        (valid_request(channel=99), "transaction.channel"),
        (valid_request(ip_address="203.0.113"), "transaction.ip_address"),
        (valid_request(ip_address="203.0.113.256"), "transaction.ip_address"),
        (valid_request(ip_address="localhost"), "transaction.ip_address"),
        # An IPv6 zone is free text (ipaddress takes it): before, a card number got in this way.
        (valid_request(ip_address="fe80::1%4111111111111111"), "transaction.ip_address"),
        (valid_request(ip_address="::1%" + "x" * 1000), "transaction.ip_address"),
        (valid_request(device_id="d" * 129), "transaction.device_id"),
        (valid_request(card_country=""), "transaction.card_country"),
        (valid_request(card_country="de"), "transaction.card_country"),
        (valid_request(card_country="DEU"), "transaction.card_country"),
        (valid_request(card_country="ZZ"), "transaction.card_country"),
        (valid_request(merchant_country=""), "transaction.merchant_country"),
        (valid_request(merchant_country="XX"), "transaction.merchant_country"),
        (valid_request(ip_country="D"), "transaction.ip_country"),
    ],
)
def test_each_rule_names_the_callers_field(request_: gateway_pb2.ScoreRequest, field: str) -> None:
    assert [path for path, _ in violations(request_)] == [field]


def test_every_violation_is_reported_at_once() -> None:
    request = valid_request(
        transaction_id="",
        card_number="1234",
        merchant_category_code="x",
        amount=gateway_pb2.Money(amount_minor=-5, currency_code="???"),
        channel=gateway_pb2.CHANNEL_UNSPECIFIED,
        ip_address="nope",
        card_country="",
    )

    assert [field for field, _ in violations(request)] == [
        "transaction.transaction_id",
        "transaction.card_number",
        "transaction.merchant_category_code",
        "transaction.amount.amount_minor",
        "transaction.amount.currency_code",
        "transaction.channel",
        "transaction.ip_address",
        "transaction.card_country",
    ]


@pytest.mark.parametrize("card_number", [TEST_PAN[:-1] + "2", TEST_PAN + "0" * 4, "4111 1111 1111 1111"])
def test_descriptions_never_echo_the_card_number(card_number: str) -> None:
    [(field, description)] = violations(valid_request(card_number=card_number))

    assert field == "transaction.card_number"
    digits = card_number.replace(" ", "")
    assert not any(digits[i : i + 5] in description for i in range(len(digits) - 4))
