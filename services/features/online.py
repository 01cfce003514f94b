"""Feature vectors from Feast's online store, in a model's feature order, each value flagged with its status.

Transport-neutral: the gRPC servicer (servicer.py) and tests call `OnlineFeatures.read` directly.
"""

from __future__ import annotations

import enum
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import redis.exceptions
import yaml
from feast import FeatureService, FeatureStore, FeatureView, RepoConfig
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from opentelemetry import trace

from services.features.aggregates import minor_to_usd
from services.features.feature_service import contract_of
from services.features.keys import card_device_id
from services.features.settings import FeaturesSettings
from services.predict.contract import FeatureContract
from services.runtime.errors import FieldViolation, InvalidInput, UpstreamFailed
from services.runtime.metrics import observe_upstream_call
from services.synthetic.transactions import USD_RATES

ONLINE_STORE_HOP = "online_store"
"""How a failed store read is named in `UpstreamFailed`."""

# What the online stores raise when they cannot be read (a locked or missing SQLite file, Redis down).
# Anything else Feast raises is a bug here or there, and must not pass for a retryable outage.
_STORE_ERRORS = (sqlite3.Error, redis.exceptions.RedisError, OSError)

_tracer = trace.get_tracer(__name__)

_MISSING_AGE_MS = -1
# Resolved once: each FieldStatus.X goes through protobuf's enum wrapper, a cost that shows per feature.
_ABSENT = frozenset({FieldStatus.NOT_FOUND, FieldStatus.NULL_VALUE})
_PRESENT = FieldStatus.PRESENT


class FeatureStatus(enum.Enum):
    PRESENT = "present"
    """A value observed within its feature view's ttl of the event time, or computed on demand."""
    MISSING = "missing"
    """No value: the entity is unknown to the store (or its key was empty)."""
    STALE = "stale"
    """A value observed longer than its feature view's ttl before the event time."""


@dataclass(frozen=True)
class EntityKeys:
    card_id: str
    merchant_id: str = ""
    device_id: str = ""
    """The caller's device identifier; the card_device entity is derived from it and the card."""


@dataclass(frozen=True)
class RequestValues:
    """The transaction's own values, for on-demand features."""

    amount_minor: int
    currency_code: str
    card_country: str = ""
    merchant_country: str = ""
    ip_country: str = ""
    channel: str = ""


@dataclass(frozen=True)
class FeatureRequest:
    """One transaction's read of one feature service."""

    feature_service: str
    keys: EntityKeys
    values: RequestValues
    event_time: datetime | None
    """When the transaction happened (timezone-aware); features are judged as of it. None: not given."""


@dataclass(frozen=True)
class FeatureVector:
    feature_service: str
    names: tuple[str, ...]
    values: tuple[float, ...]
    """NaN exactly where the status is MISSING: the model's imputer, not this service, fills gaps."""
    statuses: tuple[FeatureStatus, ...]
    ages_ms: tuple[int, ...]
    """Event time minus when the value was observed; 0 for on-demand features, -1 where MISSING."""
    event_time: datetime

    def status_counts(self) -> dict[FeatureStatus, int]:
        counts = Counter(self.statuses)
        return {status: counts[status] for status in FeatureStatus}


@dataclass(frozen=True)
class Freshness:
    """How old a feature's value may get, from its feature view."""

    on_demand: bool
    ttl_ms: int | None
    """None: the view never expires (Feast's ttl of 0)."""


@dataclass(frozen=True)
class StoredView:
    """A feature view the feature service reads from the online store, keyed by one entity."""

    view: FeatureView
    join_key: str
    features: tuple[str, ...]
    """The features read: the feature service's, and those its on-demand views compute from."""


@dataclass(frozen=True)
class OnDemandView:
    """An on-demand feature view: the Python function Feast registered, run on stored and request values."""

    transform: Callable[[dict], dict]
    sources: tuple[tuple[str, str], ...]
    """(stored view, feature) pairs the function reads, besides the request values."""


@dataclass(frozen=True)
class ServedFeatureService:
    """A feature service as read online: Feast's object, the model's order, each feature's freshness, and
    what a read must fetch and compute."""

    service: FeatureService
    contract: FeatureContract
    freshness: Mapping[str, Freshness]
    stored: tuple[StoredView, ...] = ()
    on_demand: tuple[OnDemandView, ...] = ()

    @classmethod
    def from_store(cls, store: FeatureStore, name: str) -> ServedFeatureService:
        # One registry read for the whole load (allow_cache): Feast's calls otherwise each read the registry
        # file again, logging "Registry cache expired" each time, and could see different versions of it.
        service = store.get_feature_service(name, allow_cache=True)
        on_demand_views = {view.name: view for view in store.list_on_demand_feature_views(allow_cache=True)}
        freshness, reads, on_demand = {}, {}, []
        for projection in service.feature_view_projections:
            if projection.name in on_demand_views:
                odfv = on_demand_views[projection.name]
                sources = tuple(
                    (source.name, feature.name)
                    for source in odfv.source_feature_view_projections.values()
                    for feature in source.features
                )
                for view, feature in sources:
                    reads.setdefault(view, {})[feature] = None
                on_demand.append(OnDemandView(odfv.feature_transformation.udf, sources))
                view_freshness = Freshness(on_demand=True, ttl_ms=None)
            else:
                ttl = store.get_feature_view(projection.name, allow_registry_cache=True).ttl
                ttl_ms = int(ttl.total_seconds() * 1000) if ttl else None
                view_freshness = Freshness(on_demand=False, ttl_ms=ttl_ms)
                reads.setdefault(projection.name, {}).update(
                    dict.fromkeys(f.name for f in projection.features)
                )
            freshness.update({feature.name: view_freshness for feature in projection.features})
        stored = []
        for view_name, features in reads.items():
            view = store.get_feature_view(view_name, allow_registry_cache=True)
            stored.append(StoredView(view, view.join_keys[0], tuple(features)))
        contract = contract_of(store, name, allow_cache=True)
        return cls(service, contract, freshness, tuple(stored), tuple(on_demand))


def repo_config(settings: FeaturesSettings) -> RepoConfig:
    """The repository's feature_store.yaml with its online store section replaced by the one asked for.

    One registry serves both stores, so switching to Redis changes where values are read, never which
    features or in which order.
    """
    repo = settings.feature_repo
    # As feast's own loader does: environment variables expand, relative paths resolve against the repo.
    raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    if settings.online_store == "redis":
        raw["online_store"] = {"type": "redis", "connection_string": redis_connection_string(settings)}
    config = RepoConfig(**raw)
    config.repo_path = repo
    return config


def redis_connection_string(settings: FeaturesSettings) -> str:
    """Feast's Redis connection string: the address, bounded socket waits, and no client-side retries.

    redis-py retries a refused connection with backoff for about 7 s by default, and waits on a hung
    server forever, holding a read thread either way; the caller's deadline, its retries and its hedges
    are the one layer that decides what to do about a slow or absent store. Options in `redis_address`
    come later in the string, so they win.
    """
    timeout = settings.redis_timeout_s
    return f"retry=null,socket_connect_timeout={timeout},socket_timeout={timeout},{settings.redis_address}"


def open_online_store(settings: FeaturesSettings) -> FeatureStore:
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


_CONVERTED = ", ".join(sorted(USD_RATES))


def request_violations(request: FeatureRequest, feature_services: Container[str]) -> list[FieldViolation]:
    """Everything wrong with a request at once, so the caller can fix it in one round."""
    violations = []
    if request.feature_service not in feature_services:
        violations.append(FieldViolation("feature_service", "not a feature service of this store"))
    if not request.keys.card_id:
        violations.append(FieldViolation("entity_keys.card_id", "required"))
    if request.values.currency_code not in USD_RATES:
        violations.append(
            FieldViolation(
                "request_values.currency_code",
                f"not a currency the features service converts to USD (it converts {_CONVERTED})",
            )
        )
    if request.event_time is None:
        violations.append(FieldViolation("request_values.event_time", "required"))
    return violations


def _value_as_float(value: Value) -> float:
    kind = value.WhichOneof("val")
    if kind is None:
        return math.nan
    return float(getattr(value, kind))


def feature_state(
    field_status: int, value: Value, observed_ms: int, freshness: Freshness, event_ms: int
) -> tuple[float, FeatureStatus, int]:
    """Value, status and age of one feature as Feast returned it, judged as of the event time."""
    number = _value_as_float(value)
    # Feast's online read reports PRESENT for a stored null, so the value is checked as well as the status.
    if field_status in _ABSENT or math.isnan(number):
        return math.nan, FeatureStatus.MISSING, _MISSING_AGE_MS
    if freshness.on_demand:
        return number, FeatureStatus.PRESENT, 0
    # The store holds only an entity's latest value; one observed after the event time (a replayed
    # transaction, or clocks apart) is the closest there is, and reads as fresh.
    age_ms = max(event_ms - observed_ms, 0)
    # Feast's online read does not apply the ttl (its SQLite and Redis stores return any stored value), while
    # its offline point-in-time join, which the model was trained on, drops values older than the ttl.
    if freshness.ttl_ms is not None and age_ms > freshness.ttl_ms:
        return number, FeatureStatus.STALE, age_ms
    return number, FeatureStatus.PRESENT, age_ms


@dataclass(frozen=True)
class Column:
    """One feature as read: Feast's field status, the value, and when the store observed it."""

    status: int
    value: Value
    observed_ms: int = 0


def vector_from_columns(
    columns: Mapping[str, Column], served: ServedFeatureService, event_time: datetime
) -> FeatureVector:
    """The features read, put in the contract's order and judged as of the event time."""
    event_ms = _unix_ms(event_time)
    names = served.contract.feature_names
    values, statuses, ages = [], [], []
    for name in names:
        column = columns[name]
        value, status, age = feature_state(
            column.status, column.value, column.observed_ms, served.freshness[name], event_ms
        )
        values.append(value)
        statuses.append(status)
        ages.append(age)
    return FeatureVector(
        served.contract.feature_service, names, tuple(values), tuple(statuses), tuple(ages), event_time
    )


_NOT_FOUND = Column(FieldStatus.NOT_FOUND, Value())


def _python(value: Value | None) -> float | None:
    if value is None or value.WhichOneof("val") is None:
        return None
    return _value_as_float(value)


def _as_value(number: float | int | None) -> Value:
    return Value() if number is None else Value(double_val=float(number))


def _unix_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class OnlineFeatures:
    """Reads feature vectors of the feature services a store's registry held when this was built.

    A feature service applied later is served after a restart, as is a changed feature order: a model
    version's contract is fixed, so its features must not change under it while serving.
    """

    def __init__(self, store: FeatureStore, feature_services: Iterable[str]) -> None:
        self._store = store
        # Feast's provider reaches the online store the FeatureStore was configured with (SQLite or Redis).
        self._provider = store._get_provider()
        self._served = {name: ServedFeatureService.from_store(store, name) for name in feature_services}
        self._store_type = str(getattr(store.config.online_store, "type", "") or "")

    @classmethod
    def of_registry(cls, store: FeatureStore) -> OnlineFeatures:
        services = store.registry.list_feature_services(store.project, allow_cache=True)
        return cls(store, [service.name for service in services])

    @property
    def store(self) -> FeatureStore:
        return self._store

    @property
    def feature_services(self) -> tuple[str, ...]:
        return tuple(self._served)

    def contract(self, feature_service: str) -> FeatureContract:
        return self._served[feature_service].contract

    def read(self, request: FeatureRequest) -> FeatureVector:
        """The feature service's vector for one transaction, as of its event time.

        Blocking: one store read per feature view, about 0.05 ms each on SQLite.
        """
        violations = request_violations(request, self._served)
        if violations:
            raise InvalidInput(violations)
        served = self._served[request.feature_service]
        keys, values, event_time = request.keys, request.values, request.event_time
        row = {
            "card_id": keys.card_id,
            "merchant_id": keys.merchant_id,
            # An empty key matches no stored entity, so that view's features come back MISSING.
            "card_device_id": card_device_id(keys.card_id, keys.device_id) if keys.device_id else "",
            "amount_usd": minor_to_usd(values.amount_minor, values.currency_code),
            "event_ts": event_time.timestamp(),
            "card_country": values.card_country,
            "merchant_country": values.merchant_country,
            "ip_country": values.ip_country,
            "channel": values.channel,
        }
        started = time.perf_counter()
        try:
            with _tracer.start_as_current_span(
                "feast online read",
                kind=trace.SpanKind.CLIENT,
                attributes={"db.system": self._store_type, "scoregraph.feature_service": served.service.name},
            ):
                columns = self._read_columns(served, row)
        except _STORE_ERRORS as error:
            observe_upstream_call(ONLINE_STORE_HOP, "UNAVAILABLE", time.perf_counter() - started)
            raise UpstreamFailed(ONLINE_STORE_HOP, grpc.StatusCode.UNAVAILABLE, str(error)) from error
        observe_upstream_call(ONLINE_STORE_HOP, "OK", time.perf_counter() - started)
        return vector_from_columns(columns, served, event_time)

    def _read_columns(self, served: ServedFeatureService, row: Mapping[str, object]) -> dict[str, Column]:
        """What Feast's `get_online_features` returns, without its per-call overhead.

        The SDK call spends ~1.3 ms of Python on request preparation, runtime type checks and proto
        conversions around ~0.05 ms of store reads per feature view. This makes the same reads through the
        provider's `online_read` (one per stored view) and runs the on-demand views' registered functions
        directly on the values; tests check both paths agree.
        """
        columns: dict[str, Column] = {}
        stored: dict[str, dict[str, Value]] = {}
        for source in served.stored:
            entity = Value(string_val=row[source.join_key])
            key = EntityKey(join_keys=[source.join_key], entity_values=[entity])
            [(observed, values)] = self._provider.online_read(
                self._store.config, source.view, [key], list(source.features)
            )
            stored[source.view.name] = values or {}
            observed_ms = _unix_ms(observed) if observed else 0
            for name, value in (values or {}).items():
                columns[name] = Column(_PRESENT, value, observed_ms)
        for odfv in served.on_demand:
            inputs = {name: [value] for name, value in row.items()}
            inputs.update({feature: [_python(stored[view].get(feature))] for view, feature in odfv.sources})
            for name, values in odfv.transform(inputs).items():
                columns[name] = Column(_PRESENT, _as_value(values[0]))
        return {name: columns.get(name, _NOT_FOUND) for name in served.contract.feature_names}

    def warm_up(self) -> None:
        """Read each feature service once for a card no store holds.

        The first read connects to the store and unpickles the on-demand transformations (about 0.1 s), a
        cost that belongs to start-up, not to a caller; an unreachable store fails start-up rather than
        the first request.
        """
        for name in self._served:
            self.read(
                FeatureRequest(
                    name, EntityKeys(card_id="warm-up"), RequestValues(0, "USD"), datetime.now(UTC)
                )
            )


def open_online_features(settings: FeaturesSettings) -> OnlineFeatures:
    """The feature services of the repository's registry, read from the online store asked for, warmed up."""
    features = OnlineFeatures.of_registry(open_online_store(settings))
    features.warm_up()
    return features
