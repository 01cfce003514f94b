"""The rules a Score request must meet, checked all at once so the caller can fix every field in one go.

Violations name fields as the caller's code spells them (`transaction.amount.currency_code`) and never
echo a value: the value may be a card number.
"""

import ipaddress
import unicodedata
from dataclasses import dataclass

import pycountry
from scoregraph.gateway.v1 import gateway_pb2

from services.runtime.errors import FieldViolation, InvalidInput

MAX_ID_LENGTH = 128
# An upper bound well above any real authorization (10^10 in the largest currency), so a unit mix-up or a
# corrupted value is rejected instead of scored.
MAX_AMOUNT_MINOR = 10**12

# XTS is reserved for testing and XXX means "no currency": neither can be charged.
CURRENCY_CODES = frozenset(currency.alpha_3 for currency in pycountry.currencies) - {"XTS", "XXX"}
COUNTRY_CODES = frozenset(country.alpha_2 for country in pycountry.countries)
CHANNELS = frozenset(gateway_pb2.Channel.values()) - {gateway_pb2.CHANNEL_UNSPECIFIED}

_NANOS_PER_SECOND = 1_000_000_000
#: Unicode's letters, numbers, punctuation and symbols: an identifier holds at least one.
_VISIBLE_CATEGORIES = frozenset("LNPS")
#: Letters and symbols that print as blanks (Hangul fillers, the blank Braille pattern).
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


@dataclass(frozen=True)
class CreatedAtWindow:
    """The created_at times accepted, relative to the gateway's clock."""

    max_future_s: float
    max_age_s: float


def validate_score_request(request: gateway_pb2.ScoreRequest, *, now: float, window: CreatedAtWindow) -> None:
    """Raise InvalidInput listing every rule `request` breaks; `now` is the current POSIX time."""
    if not request.HasField("transaction"):
        raise InvalidInput([FieldViolation("transaction", "is required")])
    violations: list[FieldViolation] = []
    tx = request.transaction

    def violate(field: str, description: str) -> None:
        violations.append(FieldViolation(f"transaction.{field}", description))

    def check_identifier(field: str, value: str, *, required: bool) -> None:
        if not value:
            if required:
                violate(field, "is required")
        elif len(value) > MAX_ID_LENGTH:
            violate(field, f"must be at most {MAX_ID_LENGTH} characters")
        elif not value.isprintable():
            violate(field, "must contain only printable characters")
        elif not any(
            unicodedata.category(char)[0] in _VISIBLE_CATEGORIES and char not in _BLANK_LOOKING
            for char in value
        ):
            # Blanks or combining marks alone: every such caller would share one customer, card or merchant.
            violate(field, "must contain a letter, digit, punctuation mark or symbol")

    def check_country(field: str, value: str, *, required: bool) -> None:
        if not value:
            if required:
                violate(field, "is required")
        elif value not in COUNTRY_CODES:
            violate(field, "must be an ISO 3166-1 alpha-2 country code in upper case, e.g. DE")

    check_identifier("transaction_id", tx.transaction_id, required=True)

    card = tx.WhichOneof("card")
    if card is None:
        violate("card_number", "is required, or card_token: exactly one of them identifies the card")
    elif card == "card_number":
        problem = _card_number_problem(tx.card_number)
        if problem:
            violate("card_number", problem)
    else:
        check_identifier("card_token", tx.card_token, required=True)

    check_identifier("customer_id", tx.customer_id, required=True)
    check_identifier("merchant_id", tx.merchant_id, required=True)

    mcc = tx.merchant_category_code
    if not mcc:
        violate("merchant_category_code", "is required")
    elif len(mcc) != 4 or not (mcc.isascii() and mcc.isdigit()):
        violate("merchant_category_code", "must be exactly 4 digits (ISO 18245), e.g. 5411")

    if not tx.HasField("amount"):
        violate("amount", "is required")
    else:
        if tx.amount.amount_minor <= 0:
            violate("amount.amount_minor", "must be positive")
        elif tx.amount.amount_minor >= MAX_AMOUNT_MINOR:
            violate("amount.amount_minor", f"must be less than {MAX_AMOUNT_MINOR}")
        if not tx.amount.currency_code:
            violate("amount.currency_code", "is required")
        elif tx.amount.currency_code not in CURRENCY_CODES:
            violate("amount.currency_code", "must be an ISO 4217 currency code in upper case, e.g. EUR")

    if not tx.HasField("created_at"):
        violate("created_at", "is required")
    elif not 0 <= tx.created_at.nanos < _NANOS_PER_SECOND:
        violate("created_at", "nanos must be in [0, 999999999]")
    else:
        created_at = tx.created_at.seconds + tx.created_at.nanos / _NANOS_PER_SECOND
        if created_at > now + window.max_future_s:
            violate("created_at", f"must not be more than {window.max_future_s:g} s in the future")
        elif created_at < now - window.max_age_s:
            violate("created_at", f"must not be more than {window.max_age_s:g} s in the past")

    if tx.channel == gateway_pb2.CHANNEL_UNSPECIFIED:
        violate("channel", "is required")
    elif tx.channel not in CHANNELS:
        violate("channel", "is not a Channel this API version knows")

    if tx.ip_address:
        try:
            # ipaddress takes an IPv6 zone (`fe80::1%eth0`), whose text is free and of any length.
            if "%" in tx.ip_address:
                raise ValueError("a zone")
            ipaddress.ip_address(tx.ip_address)
        except ValueError:
            violate("ip_address", "must be an IPv4 or IPv6 address without a zone, e.g. 203.0.113.7")

    check_identifier("device_id", tx.device_id, required=False)
    check_country("card_country", tx.card_country, required=True)
    check_country("merchant_country", tx.merchant_country, required=True)
    check_country("ip_country", tx.ip_country, required=False)

    if violations:
        raise InvalidInput(violations)


def _card_number_problem(number: str) -> str | None:
    if not number:
        return "is required"
    if not (12 <= len(number) <= 19 and number.isascii() and number.isdigit()):
        return "must be 12 to 19 digits with no spaces or separators"
    if not _passes_luhn(number):
        return "fails the Luhn check: not a card number"
    return None


def _passes_luhn(number: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(number)):
        value = int(digit)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0
