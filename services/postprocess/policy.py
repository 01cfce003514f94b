"""Label policies: how a model score and what is known about its inputs become a label with reasons.

Data scientists own the policies, one YAML file per model in `policies/`; see `policies/fraud_mlp.yaml` for
the format. They are validated when the service starts, so a broken file never serves a request.
"""

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

POLICY_SUFFIX = ".yaml"

_UPPER_SNAKE_CASE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")


def _upper_snake_case(code: str) -> str:
    if not _UPPER_SNAKE_CASE.fullmatch(code):
        raise ValueError("must be UPPER_SNAKE_CASE, e.g. NEW_CARD")
    return code


ReasonCode = Annotated[str, AfterValidator(_upper_snake_case)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Label(enum.Enum):
    NOT_FRAUD = enum.auto()
    SUSPICIOUS = enum.auto()
    HIGHLY_SUSPICIOUS = enum.auto()
    UNCERTAIN = enum.auto()


class Hop(enum.Enum):
    """A dependency call of the scoring graph, by the lower-case name the gateway reports it under."""

    FEATURES = "features"
    PREDICT = "predict"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} version {self.version}"


@dataclass(frozen=True)
class FeatureSummary:
    """What the features hop returned, by status; names in model order."""

    present_count: int
    missing: tuple[str, ...]
    stale: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.present_count + len(self.missing) + len(self.stale)


@dataclass(frozen=True)
class FailedHop:
    hop: Hop
    status_code: str
    """The gRPC status code name it failed with, e.g. `DEADLINE_EXCEEDED`."""


@dataclass(frozen=True)
class ScoringOutcome:
    """What the gateway learned while scoring one transaction, the input to a label policy."""

    model: ModelVersion | None
    """None when the predict hop gave no score (and the gateway did not say which model it asked)."""
    score: float | None
    features: FeatureSummary | None
    """None when the features hop failed."""
    failed_hops: tuple[FailedHop, ...] = ()


@dataclass(frozen=True)
class Reason:
    code: str
    description: str


@dataclass(frozen=True)
class LabelDecision:
    label: Label
    reasons: tuple[Reason, ...]
    """Most significant first."""
    policy_version: str
    """Empty when no policy could decide (NO_POLICY)."""


# Codes the policy logic emits itself; a feature group may not reuse one, or reasons would be ambiguous.
NO_POLICY = "NO_POLICY"
NO_SCORE = "NO_SCORE"
TOO_MANY_MISSING_FEATURES = "TOO_MANY_MISSING_FEATURES"
TOO_MANY_STALE_FEATURES = "TOO_MANY_STALE_FEATURES"
FEATURES_MISSING = "FEATURES_MISSING"
FEATURES_STALE = "FEATURES_STALE"
SCORE_IN_UNCERTAIN_BAND = "SCORE_IN_UNCERTAIN_BAND"
SCORE_ABOVE_HIGH_THRESHOLD = "SCORE_ABOVE_HIGH_THRESHOLD"
SCORE_ABOVE_THRESHOLD = "SCORE_ABOVE_THRESHOLD"
SCORE_BELOW_THRESHOLD = "SCORE_BELOW_THRESHOLD"


def hop_failed_code(hop: Hop) -> str:
    return f"{hop.name}_FAILED"


BUILT_IN_CODES = frozenset(
    {
        NO_POLICY,
        NO_SCORE,
        TOO_MANY_MISSING_FEATURES,
        TOO_MANY_STALE_FEATURES,
        FEATURES_MISSING,
        FEATURES_STALE,
        SCORE_IN_UNCERTAIN_BAND,
        SCORE_ABOVE_HIGH_THRESHOLD,
        SCORE_ABOVE_THRESHOLD,
        SCORE_BELOW_THRESHOLD,
        *(hop_failed_code(hop) for hop in Hop),
    }
)


def _decimal(value: float) -> str:
    """`value` for a reason description: floored to 4 places, so a score just below a threshold never reads
    as equal to it, with trailing zeros dropped down to 2 places: "0.93", "0.70", "0.6999"."""
    floored = Decimal(repr(value)).quantize(Decimal("0.0001"), rounding=ROUND_FLOOR)
    text = f"{floored:f}".rstrip("0")
    return text + "0" * (2 - len(text.partition(".")[2]))


class _PolicyPart(BaseModel):
    # Versions are strings in the protos; YAML reads `versions: [1]` as a number.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class AppliesTo(_PolicyPart):
    model: NonEmpty
    """Model name as served, e.g. `fraud_mlp`."""
    versions: list[NonEmpty] = Field(min_length=1)
    """Model versions as served, e.g. `["1"]`."""


class Thresholds(_PolicyPart):
    suspicious: Probability
    """Scores at or above this are SUSPICIOUS."""
    highly_suspicious: Probability
    """Scores at or above this are HIGHLY_SUSPICIOUS."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.suspicious >= self.highly_suspicious:
            raise ValueError("suspicious must be below highly_suspicious")
        return self


class UncertainBand(_PolicyPart):
    """Scores in [lower, upper) are UNCERTAIN, whatever the thresholds say."""

    lower: Probability
    upper: Annotated[float, Field(gt=0.0, le=1.0)]
    why: NonEmpty
    """Why the model is not to be relied on there; becomes part of the reason's description."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.lower >= self.upper:
            raise ValueError("lower must be below upper")
        return self

    def __contains__(self, score: float) -> bool:
        return self.lower <= score < self.upper


class FeatureLimit(_PolicyPart):
    """More features of one status than this (by count, or by share of all features) make the label
    UNCERTAIN. Set either or both."""

    max_count: int | None = Field(default=None, ge=0)
    max_share: Probability | None = None

    @model_validator(mode="after")
    def _set(self) -> Self:
        if self.max_count is None and self.max_share is None:
            raise ValueError("set max_count, max_share or both")
        return self

    def exceeded_by(self, count: int, total: int) -> str | None:
        """How `count` of `total` exceeds this limit, or None if it does not."""
        if self.max_count is not None and count > self.max_count:
            return f"{count} of {total} features, more than the {self.max_count} allowed"
        if self.max_share is not None and total and count / total > self.max_share:
            return f"{count} of {total} features, more than the {self.max_share:.0%} allowed"
        return None


class FeatureGroup(_PolicyPart):
    """Features that, when all of them are missing, mean something a person can act on."""

    code: ReasonCode
    description: NonEmpty
    features: list[NonEmpty] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.code in BUILT_IN_CODES:
            raise ValueError(f"code {self.code} is reserved for the policy's own reasons")
        if len(set(self.features)) != len(self.features):
            raise ValueError("a feature is listed twice")
        return self


class LabelPolicy(_PolicyPart):
    """The policy for one model's versions, as its data scientists wrote it."""

    policy_version: NonEmpty
    """Reported with every label it decides, for audits; change it with every edit."""
    applies_to: AppliesTo
    thresholds: Thresholds
    uncertain_band: UncertainBand | None = None
    missing_features: FeatureLimit | None = None
    stale_features: FeatureLimit | None = None
    feature_groups: list[FeatureGroup] = []

    @model_validator(mode="after")
    def _distinct_groups(self) -> Self:
        codes = [group.code for group in self.feature_groups]
        if len(set(codes)) != len(codes):
            raise ValueError("two feature groups share a code")
        return self

    def covers(self, model: ModelVersion) -> bool:
        return model.name == self.applies_to.model and model.version in self.applies_to.versions

    def decide(self, outcome: ScoringOutcome) -> LabelDecision:
        """Degradations (failed hops, untrustworthy inputs) come first, as they override the score; then
        the score's band; then what is notable about the features."""
        degradations = [*self._failures(outcome), *self._feature_limits(outcome.features)]
        label = Label.UNCERTAIN
        score_reasons: list[Reason] = []
        if outcome.score is not None:
            band_label, band_reason = self._band(outcome.score)
            score_reasons.append(band_reason)
            if not degradations:
                label = band_label
        return LabelDecision(
            label,
            (*degradations, *score_reasons, *self._feature_flags(outcome.features)),
            self.policy_version,
        )

    def _failures(self, outcome: ScoringOutcome) -> Iterator[Reason]:
        for failed in outcome.failed_hops:
            yield Reason(
                hop_failed_code(failed.hop), f"{failed.hop.value} hop failed with {failed.status_code}"
            )
        if outcome.score is None and not outcome.failed_hops:
            yield Reason(NO_SCORE, "no score, and no failed hop reported to explain why")

    def _feature_limits(self, features: FeatureSummary | None) -> Iterator[Reason]:
        if features is None:
            return
        limits = (
            (self.missing_features, features.missing, TOO_MANY_MISSING_FEATURES, "missing"),
            (self.stale_features, features.stale, TOO_MANY_STALE_FEATURES, "stale"),
        )
        for limit, names, code, status in limits:
            excess = limit.exceeded_by(len(names), features.total) if limit else None
            if excess:
                yield Reason(code, f"{status}: {excess}")

    def _band(self, score: float) -> tuple[Label, Reason]:
        band, thresholds = self.uncertain_band, self.thresholds
        shown = _decimal(score)
        if band is not None and score in band:
            return Label.UNCERTAIN, Reason(
                SCORE_IN_UNCERTAIN_BAND,
                f"score {shown} in [{_decimal(band.lower)}, {_decimal(band.upper)}): {band.why}",
            )
        if score >= thresholds.highly_suspicious:
            return Label.HIGHLY_SUSPICIOUS, Reason(
                SCORE_ABOVE_HIGH_THRESHOLD, f"score {shown} >= {_decimal(thresholds.highly_suspicious)}"
            )
        if score >= thresholds.suspicious:
            return Label.SUSPICIOUS, Reason(
                SCORE_ABOVE_THRESHOLD,
                f"score {shown} >= {_decimal(thresholds.suspicious)}"
                f" and < {_decimal(thresholds.highly_suspicious)}",
            )
        return Label.NOT_FRAUD, Reason(
            SCORE_BELOW_THRESHOLD, f"score {shown} < {_decimal(thresholds.suspicious)}"
        )

    def _feature_flags(self, features: FeatureSummary | None) -> Iterator[Reason]:
        """Missing and stale features are flagged, never passed over: by group where a whole group is
        missing, by name otherwise."""
        if features is None:
            return
        missing = set(features.missing)
        explained: set[str] = set()
        for group in self.feature_groups:
            if missing.issuperset(group.features):
                explained.update(group.features)
                yield Reason(group.code, group.description)
        unexplained = [name for name in features.missing if name not in explained]
        if unexplained:
            yield Reason(FEATURES_MISSING, "missing: " + ", ".join(unexplained))
        if features.stale:
            yield Reason(FEATURES_STALE, "stale: " + ", ".join(features.stale))


class PolicyError(Exception):
    """The label policies cannot be loaded; the message names the file and the field."""


@dataclass(frozen=True)
class PolicyCatalogue:
    """Every label policy the service knows, and which one decides a given outcome."""

    policies: dict[str, LabelPolicy]
    """By file stem, e.g. `fraud_mlp`."""
    fallback: str
    """Stem of the policy that decides outcomes naming no model (no score): its failure rules and feature
    groups apply."""

    def __post_init__(self) -> None:
        if self.fallback not in self.policies:
            raise PolicyError(f"the fallback policy {self.fallback!r} is not among {sorted(self.policies)}")

    @classmethod
    def load(cls, folder: Path, fallback: str) -> Self:
        """Every `*.yaml` in `folder`; raises PolicyError on the first problem found."""
        paths = sorted(folder.glob(f"*{POLICY_SUFFIX}"))
        if not paths:
            raise PolicyError(f"no label policy ({POLICY_SUFFIX}) in {folder}")
        policies = {path.stem: load_policy(path) for path in paths}
        _check_no_overlap(paths, policies.values())
        return cls(policies, fallback)

    def decide(self, outcome: ScoringOutcome) -> LabelDecision:
        if outcome.model is not None:
            for policy in self.policies.values():
                if policy.covers(outcome.model):
                    return policy.decide(outcome)
        if outcome.score is not None:
            return LabelDecision(
                Label.UNCERTAIN,
                (Reason(NO_POLICY, f"no label policy covers {outcome.model}"),),
                policy_version="",
            )
        return self.policies[self.fallback].decide(outcome)


def load_policy(path: Path) -> LabelPolicy:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PolicyError(f"label policy {path} cannot be read: {error}") from error
    try:
        return LabelPolicy.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '(document)'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise PolicyError(f"label policy {path} is invalid: {problems}") from error


def _check_no_overlap(paths: list[Path], policies: Iterable[LabelPolicy]) -> None:
    owners: dict[ModelVersion, Path] = {}
    for path, policy in zip(paths, policies, strict=True):
        for version in policy.applies_to.versions:
            model = ModelVersion(policy.applies_to.model, version)
            if model in owners:
                raise PolicyError(f"label policies {owners[model]} and {path} both cover {model}")
            owners[model] = path
