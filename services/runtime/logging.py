"""JSON logs on stdout, one object per line, with card numbers and IP addresses masked and the current
trace's ids."""

import ipaddress
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

# 12 digits or more (the PANs the gateway accepts have 12 to 19), grouped or not by up to three blanks,
# commas, dashes, underscores or slashes, and any longer run (a card number with a timestamp after it); or
# groups of 4 then 3 to 6 digits joined by dots or colons (a float has one dot, an IPv4 address groups of 1
# to 3, a time groups of 2). Deliberately broad: masking an order number by mistake is cheap, logging a
# card number is not.
_CARD_NUMBER = re.compile(r"(?<!\d)\d(?:[\s,_/-]{0,3}\d){11,}(?!\d)")
_DOTTED_CARD_NUMBER = re.compile(r"(?<![\d.:])\d{4}(?:[.:]\d{3,6}){2,4}(?![\d.:])")
# Secrets by name: their value goes, in the text (`cvv=123`, `"pin": "1234"`, `CVV 123`) and under such a
# key at any depth.
_SECRET_NAMES = ("cvv2", "cvv", "cvc2", "cvc", "cvn", "csc", "pin", "passwd", "password")
_NAMED_SECRET = re.compile(
    r"(?i)(?<![a-z])(" + "|".join(_SECRET_NAMES) + r")([\"']?\s*[=:]\s*[\"']?|\s+(?=\d))[^\s,;&\"'}\]]+"
)


# A dotted quad outside the private ranges: the last octet goes, which keeps the network for debugging and
# drops the host.
_IPV4 = re.compile(
    r"(?<![\d.])((?:25[0-5]|2[0-4]\d|[01]?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|[01]?\d?\d)){2})\.\d{1,3}(?![\d.])"
)
# Four or more colon-separated hex groups (or a `::` compression): kept to the first three groups.
_IPV6 = re.compile(
    r"(?<![\w:])((?:[0-9A-Fa-f]{1,4}:){1,3})(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:])"
)
# One that starts with `::` (`::1`, `::ffff:c633:6407`), which _IPV6 does not take.
_IPV6_FROM_COMPRESSION = re.compile(r"(?<![\w:])::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}(?![\w:.])")
_INFRASTRUCTURE_NETWORKS = tuple(
    ipaddress.IPv4Network(network)
    for network in ("0.0.0.0/32", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
# Values under these keys are a caller's address whatever they look like.
_IP_KEYS = frozenset({"ip", "ip_address", "client_ip", "peer", "remote_addr"})
#: Values logged under these keys, at any depth, are dropped whatever they hold.
_REDACTED_KEYS = _IP_KEYS | frozenset(_SECRET_NAMES) | {"card_number"}
#: Set by the logging pipeline itself, never from a request: not scanned (the timestamp's scans alone cost
#: 5 us a line).
_PIPELINE_KEYS = frozenset({"timestamp", "level", "logger", "service"})


def _mask_card_number(match: re.Match[str]) -> str:
    return "****" + re.sub(r"\D", "", match.group())[-4:]


def _mask_ipv4(match: re.Match[str]) -> str:
    try:
        address = ipaddress.IPv4Address(match.group())
    except ValueError:  # leading zeros (`01.2.3.4`), which ipaddress refuses: masked all the same
        return match.group(1) + ".*"
    return _masked_ipv4(address)


def _masked_ipv4(address: ipaddress.IPv4Address) -> str:
    # Infrastructure (a service's bind address, a store in the cluster network) names no one.
    if any(address in network for network in _INFRASTRUCTURE_NETWORKS):
        return str(address)
    return str(address).rpartition(".")[0] + ".*"


def _mask_ipv6_from_compression(match: re.Match[str]) -> str:
    """An address written from `::` on: an IPv4 address mapped into IPv6 (`::ffff:c633:6407`) is masked
    as that IPv4 address; loopback and unspecified are kept; any other goes whole."""
    try:
        address = ipaddress.IPv6Address(match.group())
    except ValueError:
        return match.group()
    if address.ipv4_mapped is not None:
        return "::ffff:" + _masked_ipv4(address.ipv4_mapped)
    if address.is_loopback or address.is_unspecified:
        return match.group()
    return "::*"


def _mask_ipv6(match: re.Match[str]) -> str:
    text = match.group()
    # Times (12:30:45) and the like have fewer groups than an address.
    if text.count(":") < 3 and "::" not in text:
        return text
    return match.group(1) + "*"


def _redact_text(text: str) -> str:
    text = _CARD_NUMBER.sub(_mask_card_number, text)
    if "." in text or ":" in text:
        text = _DOTTED_CARD_NUMBER.sub(_mask_card_number, text)
    lowered = text.lower()  # a scan for the names is a third of the pattern's
    if "cv" in lowered or "cs" in lowered or "pin" in lowered or "pass" in lowered:
        text = _NAMED_SECRET.sub(_mask_named_secret, text)
    text = _IPV4.sub(_mask_ipv4, text)
    if ":" not in text:
        return text
    text = _IPV6_FROM_COMPRESSION.sub(_mask_ipv6_from_compression, text)
    return _IPV6.sub(_mask_ipv6, text)


def _mask_named_secret(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + "[redacted]"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, dict):
        return {key: "[redacted]" if key in _REDACTED_KEYS else _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # The JSON renderer would repr() it after this processor has run, e.g. a protobuf request.
    return _redact(repr(value))


def redact_card_numbers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask anything that looks like a card number, a named secret (`cvv=...`) or an IP address in every
    value, nested ones and tracebacks included; drop values logged under an IP address's or a secret's
    key. A value whose masking fails is withheld, the rest of the line kept: a logging call must never fail
    the request it describes (a caller's `01.1.1.1` once made ipaddress raise here, and the caller got
    UNKNOWN with the exception's text)."""
    return {
        key: value
        if key in _PIPELINE_KEYS
        else "[redacted]"
        if key in _REDACTED_KEYS
        else _safely_redacted(value)
        for key, value in event_dict.items()
    }


def _safely_redacted(value: Any) -> Any:
    try:
        return _redact(value)
    except Exception as error:
        return f"[withheld: redaction failed, {type(error).__name__}]"


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add the W3C ids of the current OpenTelemetry span, so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = trace.format_trace_id(context.trace_id)
        event_dict["span_id"] = trace.format_span_id(context.span_id)
    return event_dict


# OpenTelemetry's propagators warn of each malformed member of a caller's `tracestate` or `baggage`, quoting
# it: a caller's text, which may hold a secret, and up to 180 lines for one call. (Of a `traceparent` they
# warn only that it is too long.)
_TRACE_HEADER_LOGGERS = frozenset(
    {
        "opentelemetry.trace.span",
        "opentelemetry.trace.propagation.tracecontext",
        "opentelemetry.baggage.propagation",
    }
)
WITHHELD = "[withheld]"


class TraceHeaderWarnings(logging.Filter):
    """Lets OpenTelemetry's warnings about a caller's malformed trace headers through without the headers'
    text (numbers, such as a length, stay), and each kind at most once per `interval_s`; the next one says
    how many were held back meanwhile."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        # Per kind (the message's format string): when one last went out, and how many were held back since.
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _TRACE_HEADER_LOGGERS:
            return True
        kind, now = str(record.msg), self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        if isinstance(record.args, tuple):
            record.args = tuple(arg if isinstance(arg, int | float) else WITHHELD for arg in record.args)
        else:  # A mapping: the message keeps its placeholders, unfilled.
            record.args = ()
        held = self._held.pop(kind, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it since the last)"
        return True


class LateResponses(logging.Filter):
    """grpc.aio's error line, with a traceback, for a response it could not send because the call had
    ended before the servicer answered (its deadline passed a moment earlier, under load), becomes an
    info line saying so: the caller has its DEADLINE_EXCEEDED and nothing failed."""

    _PREFIX = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "grpc._cython.cygrpc" or not str(record.msg).startswith(self._PREFIX):
            return True
        method = str(record.msg).removeprefix(self._PREFIX).strip(" []")
        record.msg, record.args = (
            "response not sent: the call had ended before it was answered [%s]",
            (method,),
        )
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        return logging.getLogger().isEnabledFor(logging.INFO)


class _CurrentStream:
    """Where scoregraph's own log lines go: the stream of the latest `configure_logging`. Loggers bound
    before a reconfiguration (structlog caches them on first use) follow it too."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stdout

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


_OUTPUT = _CurrentStream()


def configure_logging(level: str, *, service: str, stream: TextIO = sys.stdout) -> None:
    """One JSON renderer for structlog and standard-library logging (grpc, feast, ...).

    scoregraph's own lines (one per request per service) take structlog's native path straight to the
    stream, about a third of the cost of going through the standard library's records and handlers;
    other libraries' lines go through `logging` and the same processors.
    """
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]

    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["service"] = service
        return event_dict

    rendering: list[Processor] = [
        add_service,
        # Locals would put request objects, card numbers among them, into the log.
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        redact_card_numbers,
        # After redaction: a hex trace id can contain a long run of decimal digits.
        add_trace_context,
        structlog.processors.JSONRenderer(),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(TraceHeaderWarnings())
    handler.addFilter(LateResponses())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())

    _OUTPUT.stream = stream
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=_OUTPUT),
        cache_logger_on_first_use=True,
    )
