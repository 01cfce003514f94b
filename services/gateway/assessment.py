"""What the gateway concludes about a transaction, independent of any wire format."""

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    NOT_FRAUD = enum.auto()
    SUSPICIOUS = enum.auto()
    HIGHLY_SUSPICIOUS = enum.auto()
    UNCERTAIN = enum.auto()


@dataclass(frozen=True)
class Reason:
    code: str
    """Stable UPPER_SNAKE_CASE code callers may branch on."""
    description: str


@dataclass(frozen=True)
class Assessment:
    transaction_id: str
    verdict: Verdict
    score: float | None
    """The model's fraud probability; None when the model could not score the transaction."""
    model_name: str
    model_version: str
    reasons: tuple[Reason, ...]
    degraded: bool
    """The verdict rests on less than usual: a dependency failed, or features were missing or stale."""
    trace_id: str
