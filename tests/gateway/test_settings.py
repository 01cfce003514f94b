import pytest
from pydantic import ValidationError

from services.features.keys import DEV_CARD_KEY
from services.gateway.settings import GatewaySettings


def test_defaults_run_the_embedded_stack() -> None:
    settings = GatewaySettings()

    assert (settings.port, settings.metrics_port) == (50051, 9464)
    assert settings.features_addresses == ["127.0.0.1:50061"]
    assert settings.postprocess_addresses == ["127.0.0.1:50071"]
    assert settings.triton_addresses == ["127.0.0.1:8001"]
    assert settings.model_name == "fraud_mlp"
    assert settings.card_key.get_secret_value() == DEV_CARD_KEY
    assert settings.on_dependency_failure == "uncertain"


def test_reads_the_gateway_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_FEATURES_ADDRESSES", "10.0.0.1:50061,10.0.0.2:50061")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_CARD_KEY", "prod-key")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_ON_DEPENDENCY_FAILURE", "fail")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_DEFAULT_DEADLINE_MS", "250")

    settings = GatewaySettings()

    assert settings.features_addresses == ["10.0.0.1:50061", "10.0.0.2:50061"]
    assert settings.card_key.get_secret_value() == "prod-key"
    assert settings.on_dependency_failure == "fail"
    assert settings.default_deadline_ms == 250


def test_the_card_key_stays_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_CARD_KEY", "prod-key")

    assert "prod-key" not in repr(GatewaySettings())


def test_none_unsets_a_limit_that_has_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (GatewaySettings().max_concurrent_rpcs, GatewaySettings().max_deadline_ms) == (256, 10000)
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_MAX_CONCURRENT_RPCS", "none")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_MAX_DEADLINE_MS", " None ")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_FEATURES_HEDGE_DELAY_MS", "NONE")

    settings = GatewaySettings()

    assert (settings.max_concurrent_rpcs, settings.max_deadline_ms, settings.features_hedge_delay_ms) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize("value", ["", "0", "unlimited"])
def test_a_limit_is_a_positive_number_or_none(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_MAX_CONCURRENT_RPCS", value)

    with pytest.raises(ValidationError, match="max_concurrent_rpcs"):
        GatewaySettings()


def test_the_default_deadline_must_lie_within_the_longest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_DEFAULT_DEADLINE_MS", "20000")

    with pytest.raises(ValidationError, match=r"default_deadline_ms \(20000\) must not exceed max_deadline"):
        GatewaySettings()

    monkeypatch.setenv("SCOREGRAPH_GATEWAY_MAX_DEADLINE_MS", "none")
    assert GatewaySettings().default_deadline_ms == 20000


def test_an_unknown_failure_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_ON_DEPENDENCY_FAILURE", "ignore")

    with pytest.raises(ValidationError):
        GatewaySettings()


def test_every_setting_is_documented() -> None:
    assert [name for name, field in GatewaySettings.model_fields.items() if not field.description] == []
