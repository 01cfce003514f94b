"""Settings every scoregraph service shares, read from environment variables."""

from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_addresses(value: object) -> object:
    if isinstance(value, str):
        return [address.strip() for address in value.split(",") if address.strip()]
    return value


def _check_addresses(addresses: list[str]) -> list[str]:
    if not addresses:
        raise ValueError("at least one host:port address is required")
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r} is not host:port")
    return addresses


# NoDecode: pydantic-settings would otherwise expect a JSON array in the environment variable.
UpstreamAddresses = Annotated[
    list[str], NoDecode, BeforeValidator(_split_addresses), AfterValidator(_check_addresses)
]
"""Replica addresses of one upstream, from `host:port,host:port`; each call may go to any of them."""


def host_port(host: str, port: int) -> str:
    """`host:port` as gRPC takes it: an IPv6 address in brackets (`[::1]:50051`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unbracketed(value: object) -> object:
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return value[1:-1]
    return value


Host = Annotated[str, BeforeValidator(_unbracketed), Field(min_length=1)]
"""An interface's address or name; an IPv6 address with or without brackets (`::` or `[::]`)."""

_T = TypeVar("_T")
_Settings = TypeVar("_Settings", bound=BaseSettings)


class InvalidSettings(Exception):
    """Environment variables a settings class refused, each named with what is wrong with its value (a line
    each as text). The values are not repeated: one may hold a secret (a Redis password)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"Invalid setting {variable}: {reason}" for variable, reason in problems))
        self.problems = problems
        """(environment variable, what is wrong) for each value refused."""


def read_settings(cls: type[_Settings]) -> _Settings:
    """`cls()`, its fields read from the environment; a value it refuses raises `InvalidSettings` naming the
    variable, where pydantic would name the field and repeat the value."""
    try:
        return cls()
    except ValidationError as error:
        prefix = cls.model_config.get("env_prefix", "")
        raise InvalidSettings(
            [
                (f"{prefix}{problem['loc'][0]}".upper() if problem["loc"] else cls.__name__, problem["msg"])
                for problem in error.errors(include_url=False, include_input=False)
            ]
        ) from None


def _unset_as_none(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return value


Unsettable = Annotated[_T | None, BeforeValidator(_unset_as_none)]
"""A setting that may be unset (None): an environment variable says so with `none` (any case), which would
otherwise be refused as not a number."""

LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
]


class ServiceSettings(BaseSettings):
    """Settings of one service process.

    Each service subclasses this with its own `env_prefix` (e.g. `SCOREGRAPH_GATEWAY_`) and its own
    defaults for the embedded stack, where all services share one host.
    """

    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_", use_attribute_docstrings=True)

    host: Host = "127.0.0.1"
    """Interface the gRPC server binds to; `0.0.0.0` or `::` (every IPv4 and IPv6 one) in containers."""

    port: int = Field(default=50051, ge=0, lt=65536)
    """Port of the gRPC server; 0 picks a free one."""

    metrics_port: int = Field(default=9464, ge=0, lt=65536)
    """Port of the Prometheus `/metrics` endpoint, on the same interface as `host`; 0 disables it."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """Event loop the service runs on: `uvloop` (libuv; traced, the graph sustains about 15 % more calls at
    saturation, see the README's Benchmark section) or the standard library's `asyncio`."""

    log_level: LogLevel = "INFO"
    """Least severe level logged: DEBUG, INFO, WARNING or ERROR."""

    grace_period_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled."""

    max_concurrent_rpcs: Unsettable[int] = Field(default=None, gt=0)
    """RPCs served at once; further calls fail fast with RESOURCE_EXHAUSTED, counted and traced as any
    failed call, and logged in one line a second while shedding (health checks are never refused). Unset:
    no limit."""

    fault_delay_ms: float = Field(default=0.0, ge=0)
    """Fault injection (tests, demos, benchmarks): milliseconds added to a `fault_delay_share` of this
    process's calls. 0: none."""

    fault_delay_share: float = Field(default=1.0, ge=0, le=1)
    """Fault injection: share of calls delayed by `fault_delay_ms`."""

    fault_error_share: float = Field(default=0.0, ge=0, le=1)
    """Fault injection: share of calls answered UNAVAILABLE before any work."""

    fault_hang: bool = False
    """Fault injection: never answer a call until its caller cancels it or its deadline passes."""
