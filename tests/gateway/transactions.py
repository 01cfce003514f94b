"""Score requests as a well-behaved caller builds them."""

import time

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from scoregraph.gateway.v1 import gateway_pb2

# A Luhn-valid test card number (Visa's); any log line or message holding it is a leak.
TEST_PAN = "4111111111111111"


def valid_request(**fields) -> gateway_pb2.ScoreRequest:
    """A request that passes validation; `fields` override fields of its transaction."""
    created_at = Timestamp()
    created_at.FromNanoseconds(time.time_ns() - 5_000_000_000)
    transaction = gateway_pb2.Transaction(
        transaction_id="tx-0001",
        card_number=TEST_PAN,
        customer_id="cus-17",
        merchant_id="mer-42",
        merchant_category_code="5411",
        amount=gateway_pb2.Money(currency_code="EUR", amount_minor=1234),
        created_at=created_at,
        channel=gateway_pb2.CHANNEL_ONLINE,
        ip_address="203.0.113.7",
        device_id="dev-9",
        card_country="DE",
        merchant_country="FR",
        ip_country="DE",
    )
    for name, value in fields.items():
        if isinstance(value, Message):
            getattr(transaction, name).CopyFrom(value)
        else:
            setattr(transaction, name, value)
    return gateway_pb2.ScoreRequest(transaction=transaction)
