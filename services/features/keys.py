"""Entity keys derived from business identifiers.

A card number never leaves the gateway in clear: the card entity is a keyed hash of it (HMAC-SHA256), so the
feature store, logs and traces only ever hold the hash, and without the key the hash cannot be reversed by
enumerating card numbers. The offline pipeline and the gateway derive keys with these same functions.
"""

from __future__ import annotations

import hashlib
import hmac

#: Development key for the embedded stack; production sets SCOREGRAPH_GATEWAY_CARD_KEY (and the batch
#: pipeline's).
DEV_CARD_KEY = "scoregraph-dev-card-key"


def card_id(card_number: str, key: str = DEV_CARD_KEY) -> str:
    digest = hmac.new(key.encode(), card_number.encode(), hashlib.sha256).hexdigest()
    return f"card_{digest[:32]}"


def card_device_id(card: str, device_id: str) -> str:
    """The (card, device) pair: its features tell whether this card has been used on this device before."""
    digest = hashlib.sha256(f"{card}|{device_id}".encode()).hexdigest()
    return f"cd_{digest[:32]}"
