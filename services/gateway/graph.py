"""The Score graph: validate, translate, read features, predict, label. Knows no server, only upstreams."""

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.context import Context
from scoregraph.features.v1 import features_pb2, features_pb2_grpc
from scoregraph.gateway.v1 import gateway_pb2
from scoregraph.postprocess.v1 import postprocess_pb2, postprocess_pb2_grpc
from tritonclient.grpc import service_pb2

from services.gateway.assessment import Assessment, Reason, Verdict
from services.gateway.codec import UnknownLabel, decode_label
from services.gateway.deadline import Deadline
from services.gateway.settings import GatewaySettings
from services.gateway.translate import callers_violations, summarize_features, translate_transaction
from services.gateway.validation import CreatedAtWindow, validate_score_request
from services.predict.client import (
    InvalidFeatures,
    InvalidScores,
    ModelUnavailable,
    PredictError,
    PredictResult,
    PredictTimeout,
    ServedModel,
)
from services.runtime.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidInput,
    UpstreamFailed,
    field_violations_in,
)
from services.runtime.resilience import (
    DEGRADED_VERDICTS,
    Attempt,
    AttemptFailed,
    HedgedCall,
    ReplicaSet,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FEATURES = "features"
PREDICT = "predict"
POSTPROCESS = "postprocess"


def _rpc(module: ModuleType, service: str, method: str) -> tuple[str, str]:
    """(full service name, method name) of `service`'s `method` in a generated `_pb2` module."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return descriptor.full_name, descriptor.methods_by_name[method].name


_PREDICT_ERROR_CODES = (
    (PredictTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (InvalidFeatures, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    # A model that answers no probability is the predict hop failing: the verdict degrades to UNCERTAIN,
    # where a score passed on would be refused by postprocess and fail the call.
    (InvalidScores, grpc.StatusCode.INTERNAL),
)


class Predictor(Protocol):
    """Scores feature rows ordered as the served model's contract (a PredictClient per Triton replica, in
    production)."""

    async def predict(
        self, features: np.ndarray, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> PredictResult: ...


class HopFailed(Exception):
    """A hop gave no usable answer; the policy decides whether the request degrades or fails."""

    def __init__(
        self, hop: str, code: grpc.StatusCode, message: str, violations: Sequence[FieldViolation] = ()
    ) -> None:
        super().__init__(f"{hop} failed: {code.name}")
        self.hop = hop
        self.code = code
        self.message = message
        self.violations = tuple(violations)
        """The fields of the hop's request an INVALID_ARGUMENT named."""


class ScoreGraph:
    """Answers Score requests by calling the features, predict and postprocess hops in turn.

    Every hop gets what remains of the caller's deadline, less a reserve for the gateway's work after it,
    and is hedged and retried across the hop's replicas (HedgedCall). A failing hop degrades the verdict to
    UNCERTAIN or fails the call, as `on_dependency_failure` says. An upstream's INVALID_ARGUMENT always
    fails it: as the caller's INVALID_ARGUMENT when the features service refused values the caller sent
    (named as the caller's fields), else as the gateway's own error, since it sent a malformed request.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        features: ReplicaSet[features_pb2_grpc.FeaturesServiceStub],
        predictor: ReplicaSet[Predictor],
        served_model: ServedModel,
        postprocess: ReplicaSet[postprocess_pb2_grpc.PostprocessServiceStub],
        tracer: trace.Tracer,
    ) -> None:
        retry = settings.retry_policy()

        def hedged(hop: str, replicas: ReplicaSet, rpc: tuple[str, str]) -> HedgedCall:
            return HedgedCall(
                hop, replicas, hedge=settings.hedge_policy(hop), retry=retry, tracer=tracer, rpc=rpc
            )

        self.features = hedged(FEATURES, features, _rpc(features_pb2, "FeaturesService", "GetFeatures"))
        self.predict = hedged(PREDICT, predictor, _rpc(service_pb2, "GRPCInferenceService", "ModelInfer"))
        self.postprocess = hedged(
            POSTPROCESS, postprocess, _rpc(postprocess_pb2, "PostprocessService", "Label")
        )
        self._served = served_model
        self._tracer = tracer
        self._card_key = settings.card_key.get_secret_value()
        self._default_budget_s = settings.default_deadline_ms / 1000
        self._max_budget_s = None if settings.max_deadline_ms is None else settings.max_deadline_ms / 1000
        self._reserve_s = settings.hop_reserve_ms / 1000
        self._fail_on_dependency_failure = settings.on_dependency_failure == "fail"
        self._created_at_window = CreatedAtWindow(settings.max_clock_skew_s, settings.max_transaction_age_s)

    async def score(
        self, request: gateway_pb2.ScoreRequest, *, budget_s: float | None, parent: Context | None = None
    ) -> Assessment:
        """Score `request` within `budget_s` (the default deadline when None; the longest allowed when
        longer), in a span under `parent`."""
        started = time.perf_counter()
        if budget_s is None:
            budget_s = self._default_budget_s
        elif self._max_budget_s is not None:
            budget_s = min(budget_s, self._max_budget_s)
        deadline = Deadline(budget_s, reserve_s=self._reserve_s)
        with self._span(parent) as span:
            validate_score_request(request, now=time.time(), window=self._created_at_window)
            tx = request.transaction

            failures: list[HopFailed] = []
            summary: postprocess_pb2.FeatureSummary | None = None
            prediction: PredictResult | None = None
            try:
                features = await self._read_features(tx, deadline)
                summary = summarize_features(features)
                prediction = await self._predict(features, deadline)
            except HopFailed as failure:
                self._fail_unless_degradable(failure)
                failures.append(failure)

            label_request = _label_request(prediction, summary, failures)
            try:
                verdict, reasons = await self._label(label_request, deadline, after_failure=bool(failures))
            except HopFailed as failure:
                self._fail_unless_degradable(failure)
                failures.append(failure)
                verdict, reasons = Verdict.UNCERTAIN, _failure_reasons(failures)
            for failure in failures:
                DEGRADED_VERDICTS.labels(failure.hop).inc()

            assessment = Assessment(
                transaction_id=tx.transaction_id,
                verdict=verdict,
                score=label_request.score if label_request.HasField("score") else None,
                model_name=label_request.model_name,
                model_version=label_request.model_version,
                reasons=reasons,
                # A missing feature is information (a new card or device), reported in the reasons; stale ones
                # mean the store lags, which is the graph degrading.
                degraded=bool(failures or summary is None or summary.stale_count),
                trace_id=_trace_id(span.get_span_context()),
            )
            span.set_attribute("scoregraph.verdict", verdict.name)
            span.set_attribute("scoregraph.degraded", assessment.degraded)
            if failures:
                span.set_attribute("scoregraph.failed_hops", [failure.hop for failure in failures])
            log.info(
                "scored",
                transaction_id=tx.transaction_id,
                verdict=verdict.name,
                degraded=assessment.degraded,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                failed_hops=[
                    {"hop": failure.hop, "code": failure.code.name, "message": failure.message}
                    for failure in failures
                ],
            )
            return assessment

    def _span(self, parent: Context | None) -> contextlib.AbstractContextManager[trace.Span]:
        """The span a Score call's hops hang under: the server's span of the call when one is current (the
        gateway's RPC), else a `score` span of its own under `parent` (the graph used without a server)."""
        current = trace.get_current_span()
        if parent is None and current.is_recording():
            return contextlib.nullcontext(current)
        return self._tracer.start_as_current_span("score", context=parent)

    def _fail_unless_degradable(self, failure: HopFailed) -> None:
        if failure.code is grpc.StatusCode.INVALID_ARGUMENT:
            # The features service refusing a value the caller sent (a currency it cannot convert) is the
            # caller's to fix, and is told in the caller's terms; anything else it refuses, or another hop
            # refuses, the gateway made, so it is the gateway's error.
            caller = callers_violations(failure.violations) if failure.hop == FEATURES else None
            if caller:
                raise InvalidInput(caller) from failure
            raise UpstreamFailed(failure.hop, failure.code, failure.message) from failure
        if self._fail_on_dependency_failure:
            raise UpstreamFailed(failure.hop, failure.code, failure.message) from failure

    async def _call(self, hop: HedgedCall[T], attempt: Attempt[T, R], deadline: Deadline) -> R:
        try:
            return await hop(attempt, deadline)
        except AttemptFailed as failure:
            raise HopFailed(hop.hop, failure.code, failure.message, failure.violations) from failure

    async def _read_features(
        self, tx: gateway_pb2.Transaction, deadline: Deadline
    ) -> features_pb2.GetFeaturesResponse:
        request = translate_transaction(tx, self._card_key, self._served.contract.feature_service)

        attempt = _grpc_attempt(lambda stub: stub.GetFeatures, request)
        response = await self._call(self.features, attempt, deadline)
        self._check_contract(response)
        return response

    def _check_contract(self, response: features_pb2.GetFeaturesResponse) -> None:
        """Fail the features hop unless its answer is in exactly the order the served model expects."""
        expected = self._served.contract.feature_names
        names = tuple(response.feature_names)
        if names != expected:
            raise HopFailed(
                FEATURES,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"feature service {self._served.contract.feature_service} answered features "
                f"{_first_difference(names, expected)}; model {self._served.name} version "
                f"{self._served.version} was trained on {len(expected)} features in its contract's order",
            )
        if len(response.values) != len(names) or len(response.statuses) != len(names):
            raise HopFailed(
                FEATURES,
                grpc.StatusCode.INTERNAL,
                f"{len(names)} feature names came with {len(response.values)} values and "
                f"{len(response.statuses)} statuses",
            )

    async def _predict(self, features: features_pb2.GetFeaturesResponse, deadline: Deadline) -> PredictResult:
        # NaN (missing) stays NaN: the model imputes missing features itself.
        row = np.array(features.values, dtype=np.float32).reshape(1, -1)

        async def attempt(predictor: Predictor, timeout_s: float, headers: dict[str, str]) -> PredictResult:
            if not trace.get_current_span().get_span_context().trace_flags.sampled:
                # tritonserver traces every request that carries a trace context, whatever its sampled
                # flag says, and runs with a trace rate of 0, tracing nothing else (see trace_args): an
                # unsampled call's context stays out, so Triton traces the calls the gateway samples.
                headers = {}
            try:
                return await predictor.predict(row, timeout_s=timeout_s, headers=headers)
            except PredictError as error:
                code = next(
                    (code for kind, code in _PREDICT_ERROR_CODES if isinstance(error, kind)),
                    grpc.StatusCode.UNKNOWN,
                )
                raise AttemptFailed(code, str(error)) from error

        return await self._call(self.predict, attempt, deadline)

    async def _label(
        self, request: postprocess_pb2.LabelRequest, deadline: Deadline, *, after_failure: bool
    ) -> tuple[Verdict, tuple[Reason, ...]]:
        attempt = _grpc_attempt(lambda stub: stub.Label, request)
        try:
            response = await self._call(self.postprocess, attempt, deadline)
        except DeadlineExceeded as error:
            if not after_failure:
                raise
            # An earlier hop that ran out the budget already decided the verdict: the gateway answers it
            # in the reserve rather than fail a call it can still answer.
            raise HopFailed(POSTPROCESS, grpc.StatusCode.DEADLINE_EXCEEDED, error.message) from error
        try:
            return decode_label(response)
        except UnknownLabel as error:
            raise HopFailed(POSTPROCESS, grpc.StatusCode.UNKNOWN, str(error)) from error


def _label_request(
    prediction: PredictResult | None,
    summary: postprocess_pb2.FeatureSummary | None,
    failures: Sequence[HopFailed],
) -> postprocess_pb2.LabelRequest:
    return postprocess_pb2.LabelRequest(
        model_name="" if prediction is None else prediction.model_name,
        model_version="" if prediction is None else prediction.model_version,
        score=None if prediction is None else float(prediction.scores[0]),
        feature_summary=summary,
        failed_hops=[
            postprocess_pb2.FailedHop(hop=failure.hop, status_code=failure.code.name) for failure in failures
        ],
    )


def _grpc_attempt(method: Callable[[Any], Any], request: Message):
    """One attempt of a gRPC hop: `method(stub)(request)` with the attempt's timeout and trace headers, its
    failure as the status code the hedging and retry policy decide on."""

    async def attempt(stub: Any, timeout_s: float, headers: dict[str, str]) -> Any:
        try:
            return await method(stub)(request, timeout=timeout_s, metadata=tuple(headers.items()))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            violations = (
                field_violations_in(error.trailing_metadata())
                if code is grpc.StatusCode.INVALID_ARGUMENT
                else ()
            )
            raise AttemptFailed(code, error.details() or "", violations=violations) from error

    return attempt


def _first_difference(names: tuple[str, ...], expected: tuple[str, ...]) -> str:
    for position, (name, wanted) in enumerate(zip(names, expected, strict=False)):
        if name != wanted:
            return f"with {name!r} at position {position} where the model expects {wanted!r}"
    return f"{len(names)} in number where the model expects {len(expected)}"


def _failure_reasons(failures: Sequence[HopFailed]) -> tuple[Reason, ...]:
    """Reasons for an UNCERTAIN verdict the gateway reaches without the label policy, last failure first."""
    return tuple(
        Reason(
            f"{failure.hop.upper()}_FAILED",
            f"the {failure.hop} service failed with {failure.code.name}",
        )
        for failure in reversed(failures)
    )


def _trace_id(context: trace.SpanContext) -> str:
    """The call's W3C trace id, or "" when it has none (tracing off, and no caller's trace to continue)."""
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""
