import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from services.runtime.settings import (
    InvalidSettings,
    ServiceSettings,
    UpstreamAddresses,
    host_port,
    read_settings,
)


class FeaturesClientSettings(ServiceSettings):
    """A service's settings as each service declares them: own prefix, own defaults, upstream lists."""

    model_config = SettingsConfigDict(env_prefix="SCOREGRAPH_EXAMPLE_")

    port: int = 50070
    """Port of the example service."""

    features_addresses: UpstreamAddresses = ["127.0.0.1:50061"]
    """Replicas of the features service."""


def test_defaults_need_no_environment() -> None:
    settings = FeaturesClientSettings()

    assert settings.port == 50070
    assert settings.host == "127.0.0.1"
    assert settings.log_level == "INFO"
    assert settings.features_addresses == ["127.0.0.1:50061"]
    assert settings.max_concurrent_rpcs is None


def test_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_PORT", "6000")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_LOG_LEVEL", "debug")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_GRACE_PERIOD_S", "2.5")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_MAX_CONCURRENT_RPCS", "64")
    monkeypatch.setenv("SCOREGRAPH_OTHER_PORT", "7000")

    settings = FeaturesClientSettings()

    assert settings.port == 6000
    assert settings.log_level == "DEBUG"
    assert settings.grace_period_s == 2.5
    assert settings.max_concurrent_rpcs == 64


def test_upstream_addresses_parse_from_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_FEATURES_ADDRESSES", "features-0:50061, features-1:50061,[::1]:9")

    settings = FeaturesClientSettings()

    assert settings.features_addresses == ["features-0:50061", "features-1:50061", "[::1]:9"]


@pytest.mark.parametrize("value", ["", "features-0", "features-0:http", ":50061", "features-0:70000"])
def test_malformed_upstream_addresses_are_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_FEATURES_ADDRESSES", value)

    with pytest.raises(ValidationError, match="features_addresses"):
        FeaturesClientSettings()


def test_unknown_log_level_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_LOG_LEVEL", "verbose")

    with pytest.raises(ValidationError, match="log_level"):
        FeaturesClientSettings()


def test_refused_values_are_named_by_their_variable_and_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_PORT", "4111111111111111-secret")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_LOG_LEVEL", "verbose")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_FEATURES_ADDRESSES", "features-0")
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_GRACE_PERIOD_S", "2.5")

    with pytest.raises(InvalidSettings) as refused:
        read_settings(FeaturesClientSettings)

    assert [variable for variable, _ in refused.value.problems] == [
        "SCOREGRAPH_EXAMPLE_PORT",
        "SCOREGRAPH_EXAMPLE_LOG_LEVEL",
        "SCOREGRAPH_EXAMPLE_FEATURES_ADDRESSES",
    ]
    text = str(refused.value)
    assert text.splitlines()[0] == (
        "Invalid setting SCOREGRAPH_EXAMPLE_PORT: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    assert "4111111111111111" not in text and "secret" not in text
    assert "'features-0' is not host:port" in text


def test_read_settings_reads_what_the_class_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_EXAMPLE_PORT", "6000")

    assert read_settings(FeaturesClientSettings) == FeaturesClientSettings()


def test_every_field_is_documented() -> None:
    # Each field is an environment variable operators set; its description is its documentation.
    undocumented = [name for name, field in ServiceSettings.model_fields.items() if not field.description]

    assert undocumented == []


@pytest.mark.parametrize(
    ("host", "read", "address"),
    [
        ("0.0.0.0", "0.0.0.0", "0.0.0.0:50051"),
        ("localhost", "localhost", "localhost:50051"),
        ("::", "::", "[::]:50051"),
        ("[::]", "::", "[::]:50051"),
        ("[::1]", "::1", "[::1]:50051"),
    ],
)
def test_a_host_is_read_with_or_without_brackets_and_bracketed_in_addresses(monkeypatch, host, read, address):
    monkeypatch.setenv("SCOREGRAPH_HOST", host)
    settings = ServiceSettings()
    assert settings.host == read
    assert host_port(settings.host, 50051) == address
