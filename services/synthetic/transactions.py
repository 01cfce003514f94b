"""Synthetic card transactions with ground-truth fraud labels.

The world: cards with a home country, a spending habit, a daily rhythm and a few devices; merchants with
a category, a country and a risk tier. Legitimate activity follows each card's habit, with the noise that
makes a simple rule fail (big legitimate purchases, travel, night owls, new phones). Fraud comes as
campaigns that a model can learn from history-aware features: velocity bursts, card testing, account
takeover, amounts far above the card's habit, concentrated on risky merchants and at night.

Everything is drawn from one seeded generator, so (seed, anchor) fixes the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

COUNTRIES = np.array(
    ["US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "BR", "MX", "IN", "NG", "RO", "VN", "RU"]
)
HOME_COUNTRIES = COUNTRIES[:8]
HOME_WEIGHTS = np.array([0.55, 0.1, 0.08, 0.07, 0.08, 0.04, 0.04, 0.04])
# Countries a fraudster's IP tends to come from; legitimate travel goes anywhere.
FRAUD_IP_COUNTRIES = np.array(["BR", "NG", "RO", "VN", "RU", "IN", "MX"])
# Merchant category codes: (mcc, online share, risky).
CATEGORIES = [
    ("5411", 0.05, False),  # grocery
    ("5812", 0.1, False),  # restaurants
    ("5541", 0.0, False),  # fuel
    ("5311", 0.3, False),  # department stores
    ("4121", 0.8, False),  # taxis and rideshare
    ("5732", 0.7, True),  # electronics
    ("5816", 1.0, True),  # digital goods / games
    ("6051", 1.0, True),  # crypto and quasi-cash
    ("5999", 0.6, False),  # misc retail
    ("4722", 0.9, False),  # travel agencies
]
CURRENCY_BY_COUNTRY = {"US": "USD", "CA": "CAD", "GB": "GBP", "BR": "BRL", "MX": "MXN", "IN": "INR"}
# Units of each currency per US dollar: the features service converts back with the same table.
USD_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "CAD": 1.36, "BRL": 5.0, "MXN": 17.0, "INR": 83.0}
CHANNELS = np.array(["ONLINE", "IN_STORE", "MOBILE_APP"])


@dataclass(frozen=True)
class WorldSpec:
    """Size and shape of the synthetic world."""

    seed: int = 7
    cards: int = 6000
    merchants: int = 800
    history_days: int = 42
    live_hours: int = 24
    #: Share of fraudulent transactions, as close as campaign sizes allow.
    fraud_rate: float = 0.01


@dataclass(frozen=True)
class Cards:
    number: np.ndarray  # 16-digit Luhn-valid PANs as strings
    home: np.ndarray  # home country
    habit: np.ndarray  # median amount in USD
    rate: np.ndarray  # transactions per day
    peak_hour: np.ndarray  # centre of the card's daily rhythm (local hour)
    devices: np.ndarray  # (cards, 3) device ids; the first n_devices are in use
    n_devices: np.ndarray
    customer: np.ndarray


@dataclass(frozen=True)
class Merchants:
    id: np.ndarray
    mcc: np.ndarray
    online_share: np.ndarray
    risky: np.ndarray
    country: np.ndarray


def luhn_complete(prefixes: np.ndarray) -> np.ndarray:
    """Append the Luhn check digit to each 15-digit prefix."""
    digits = np.array([[int(c) for c in p] for p in prefixes])
    # Doubling starts from the rightmost digit of the prefix (the check digit goes after it).
    weights = np.where(np.arange(digits.shape[1])[::-1] % 2 == 0, 2, 1)
    doubled = digits * weights
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    check = (10 - doubled.sum(axis=1) % 10) % 10
    return np.array([p + str(c) for p, c in zip(prefixes, check, strict=True)])


def make_cards(rng: np.random.Generator, n: int) -> Cards:
    # 4000 00xx BIN range: test numbers, never a real issuer's.
    body = rng.integers(0, 10**9, size=n)
    prefixes = np.array([f"400000{b:09d}" for b in body])
    number = luhn_complete(prefixes)
    devices = np.array([[f"dev-{i:05d}-{k}" for k in range(3)] for i in range(n)])
    return Cards(
        number=number,
        home=rng.choice(HOME_COUNTRIES, size=n, p=HOME_WEIGHTS),
        habit=np.exp(rng.normal(np.log(35), 0.6, size=n)),
        rate=np.exp(rng.normal(np.log(1.2), 0.6, size=n)).clip(0.15, 8),
        peak_hour=rng.normal(14, 3, size=n).clip(7, 21),
        devices=devices,
        n_devices=rng.choice([1, 2, 3], size=n, p=[0.55, 0.35, 0.1]),
        customer=np.array([f"cust-{i:05d}" for i in rng.permutation(n)]),
    )


def make_merchants(rng: np.random.Generator, n: int) -> Merchants:
    cat = rng.choice(len(CATEGORIES), size=n, p=[0.2, 0.18, 0.1, 0.1, 0.08, 0.07, 0.06, 0.03, 0.12, 0.06])
    risky_cat = np.array([CATEGORIES[c][2] for c in cat])
    # A risky category makes a merchant risky often, a safe one rarely: risk is learned per merchant.
    risky = rng.random(n) < np.where(risky_cat, 0.5, 0.03)
    return Merchants(
        id=np.array([f"m-{i:04d}" for i in range(n)]),
        mcc=np.array([CATEGORIES[c][0] for c in cat]),
        online_share=np.array([CATEGORIES[c][1] for c in cat]),
        risky=risky,
        country=np.where(rng.random(n) < 0.8, "US", rng.choice(COUNTRIES[:8], size=n)),
    )


def _hours(rng: np.random.Generator, peak: np.ndarray) -> np.ndarray:
    """Local hour of day around each card's peak; a few night owls."""
    hour = rng.normal(peak, 3.5)
    night = rng.random(len(peak)) < 0.03
    hour = np.where(night, rng.uniform(0, 5, size=len(peak)), hour)
    return np.mod(hour, 24)


def _legit(rng: np.random.Generator, cards: Cards, merchants: Merchants, start: datetime, hours: float):
    days = hours / 24
    counts = rng.poisson(cards.rate * days)
    card = np.repeat(np.arange(len(counts)), counts)
    n = len(card)
    day = rng.integers(0, max(int(np.ceil(days)), 1), size=n)
    offset_h = day * 24 + _hours(rng, cards.peak_hour[card])
    offset_h = np.where(offset_h >= hours, rng.uniform(0, hours, size=n), offset_h)
    # Each card shops mostly at a handful of favourite merchants.
    favourite = (card[:, None] * 7919 + np.arange(5)[None, :] * 104729) % len(merchants.id)
    merchant = np.where(
        rng.random(n) < 0.7,
        favourite[np.arange(n), rng.integers(0, 5, size=n)],
        rng.integers(0, len(merchants.id), size=n),
    )
    amount = cards.habit[card] * np.exp(rng.normal(0, 0.7, size=n))
    big = rng.random(n) < 0.01  # a legitimate big purchase
    amount = np.where(big, amount * rng.uniform(5, 25, size=n), amount)
    device = cards.devices[card, rng.integers(0, cards.n_devices[card])]
    new_phone = rng.random(n) < 0.004
    device = np.where(new_phone, [f"dev-new-{i}" for i in rng.integers(0, 10**9, size=n)], device)
    travelling = rng.random(n) < 0.02
    ip_country = np.where(travelling, rng.choice(COUNTRIES, size=n), cards.home[card])
    return dict(
        card=card,
        offset_h=offset_h,
        merchant=merchant,
        amount=amount,
        device=device,
        ip_country=ip_country,
        is_fraud=np.zeros(n, bool),
        pattern=np.full(n, "none"),
    )


def _campaign(rng, cards: Cards, merchants: Merchants, card: int, hours: float, pattern: str):
    """One fraud campaign on one card: a list of transaction rows."""
    risky = np.flatnonzero(merchants.risky)
    online = np.flatnonzero(merchants.online_share >= 0.7)
    night = rng.random() < 0.6
    start = rng.uniform(0, max(hours - 2, 1))
    if night:
        start = np.floor(start / 24) * 24 + rng.uniform(0, 5)
    new_device = f"dev-fraud-{rng.integers(0, 10**9)}"
    foreign = rng.choice(FRAUD_IP_COUNTRIES)
    habit = cards.habit[card]
    if pattern == "velocity":
        n = rng.integers(5, 13)
        offsets = start + np.sort(rng.uniform(0, 1.0, size=n))
        amounts = habit * rng.uniform(1.0, 4.0, size=n)
        pool = np.concatenate([risky, online])
    elif pattern == "card_testing":
        n = rng.integers(6, 16)
        offsets = start + np.sort(rng.uniform(0, 0.35, size=n))
        amounts = rng.uniform(0.5, 3.0, size=n)
        amounts[-1] = habit * rng.uniform(6, 20)
        pool = risky
    elif pattern == "takeover":
        n = rng.integers(1, 4)
        offsets = start + np.sort(rng.uniform(0, 3.0, size=n))
        amounts = habit * rng.uniform(5, 20, size=n)
        pool = np.concatenate([risky, online])
    else:  # far above habit, on the card's own device
        n = rng.integers(1, 3)
        offsets = start + np.sort(rng.uniform(0, 6.0, size=n))
        amounts = habit * rng.uniform(8, 30, size=n)
        pool = np.arange(len(merchants.id)) if rng.random() < 0.5 else risky
    use_new_device = pattern in ("takeover", "card_testing") or (pattern == "velocity" and rng.random() < 0.6)
    device = new_device if use_new_device else cards.devices[card, 0]
    foreign_ip = pattern == "takeover" or rng.random() < 0.35
    return dict(
        card=np.full(n, card),
        offset_h=np.minimum(offsets, hours - 1e-3),
        merchant=rng.choice(pool, size=n),
        amount=amounts,
        device=np.full(n, device),
        ip_country=np.full(n, foreign if foreign_ip else cards.home[card]),
        is_fraud=np.ones(n, bool),
        pattern=np.full(n, pattern),
    )


PATTERNS = np.array(["velocity", "card_testing", "takeover", "far_above_habit"])
PATTERN_MEAN_SIZE = {"velocity": 8.5, "card_testing": 10.5, "takeover": 2.0, "far_above_habit": 1.5}


def _frame(parts: list[dict], cards: Cards, merchants: Merchants, rng, start: datetime, id_prefix: str):
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cols["card"])
    card, merchant = cols["card"], cols["merchant"]
    online = rng.random(n) < merchants.online_share[merchant]
    channel = np.where(online, np.where(rng.random(n) < 0.5, "ONLINE", "MOBILE_APP"), "IN_STORE")
    currency = np.array([CURRENCY_BY_COUNTRY.get(c, "EUR") for c in cards.home[card]])
    rate = np.array([USD_RATES[c] for c in currency])
    amount_minor = np.maximum(np.round(cols["amount"] * rate * 100), 1).astype(np.int64)
    ts = (pd.Timestamp(start) + pd.to_timedelta(cols["offset_h"], unit="h")).floor("ms")
    # IPs from documentation ranges, with the country carried separately as a real caller's geo-IP would.
    ip = [f"198.51.{a}.{b}" for a, b in zip(rng.integers(0, 256, n), rng.integers(1, 255, n), strict=True)]
    df = pd.DataFrame(
        {
            "created_at": ts,
            "card_number": cards.number[card],
            "customer_id": cards.customer[card],
            "merchant_id": merchants.id[merchant],
            "merchant_category_code": merchants.mcc[merchant],
            "amount_minor": amount_minor,
            "currency_code": currency,
            "channel": channel,
            "ip_address": ip,
            "device_id": cols["device"],
            "card_country": cards.home[card],
            "merchant_country": merchants.country[merchant],
            "ip_country": cols["ip_country"],
            "is_fraud": cols["is_fraud"],
            "fraud_pattern": cols["pattern"],
        }
    )
    df = df.sort_values("created_at", kind="stable").reset_index(drop=True)
    df.insert(0, "transaction_id", [f"{id_prefix}-{i:07d}" for i in range(len(df))])
    return df


def _period(rng, cards, merchants, start: datetime, hours: float, fraud_rate: float, id_prefix: str):
    legit = _legit(rng, cards, merchants, start, hours)
    target = fraud_rate / (1 - fraud_rate) * len(legit["card"])
    parts, made = [legit], 0.0
    # Fraud hits a random set of cards once each, mostly cards with little history noise.
    victims = rng.permutation(len(cards.number))
    for card in victims:
        if made >= target:
            break
        pattern = rng.choice(PATTERNS, p=[0.3, 0.25, 0.25, 0.2])
        part = _campaign(rng, cards, merchants, int(card), hours, str(pattern))
        parts.append(part)
        made += len(part["card"])
    return _frame(parts, cards, merchants, rng, start, id_prefix)


def generate(spec: WorldSpec, anchor: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History (`history_days` before `anchor`) and a live stream (`live_hours` after it).

    The live stream uses the same cards and merchants with later, unseen transactions.
    """
    rng = np.random.default_rng(spec.seed)
    cards = make_cards(rng, spec.cards)
    merchants = make_merchants(rng, spec.merchants)
    start = anchor - timedelta(days=spec.history_days)
    history = _period(rng, cards, merchants, start, spec.history_days * 24, spec.fraud_rate, "tx")
    live = _period(rng, cards, merchants, anchor, spec.live_hours, spec.fraud_rate, "live")
    return history, live


def default_anchor(now: datetime | None = None) -> datetime:
    """Midnight UTC yesterday: the live day is over by the time it is scored, so its transactions are not in
    the future; rebuilding on the same day gives identical data."""
    now = now or datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
