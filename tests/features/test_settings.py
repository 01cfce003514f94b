import pytest
from pydantic import ValidationError

from services.features.feature_service import FEATURE_REPO
from services.features.settings import FeaturesSettings


def test_defaults_read_the_embedded_sqlite_store() -> None:
    settings = FeaturesSettings()

    assert (settings.port, settings.metrics_port) == (50061, 9465)
    assert settings.feature_repo == FEATURE_REPO
    assert settings.online_store == "sqlite"
    assert settings.online_read_threads == 0


@pytest.mark.parametrize(
    ("online_store", "read_threads", "threads"),
    [("sqlite", None, 0), ("redis", None, 4), ("sqlite", 2, 2), ("redis", 0, 0)],
)
def test_reads_leave_the_event_loop_for_redis_unless_told(online_store, read_threads, threads) -> None:
    settings = FeaturesSettings(online_store=online_store, read_threads=read_threads)

    assert settings.online_read_threads == threads


def test_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_FEATURES_ONLINE_STORE", "redis")
    monkeypatch.setenv("SCOREGRAPH_FEATURES_REDIS_ADDRESS", "redis:6379")
    monkeypatch.setenv("SCOREGRAPH_FEATURES_READ_THREADS", "2")
    monkeypatch.setenv("SCOREGRAPH_POSTPROCESS_PORT", "7000")

    settings = FeaturesSettings()

    assert (settings.online_store, settings.redis_address, settings.read_threads) == (
        "redis",
        "redis:6379",
        2,
    )
    assert settings.port == 50061


def test_an_unknown_online_store_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREGRAPH_FEATURES_ONLINE_STORE", "dynamodb")

    with pytest.raises(ValidationError, match="online_store"):
        FeaturesSettings()


def test_every_setting_is_documented() -> None:
    undocumented = [name for name, field in FeaturesSettings.model_fields.items() if not field.description]

    assert undocumented == []
