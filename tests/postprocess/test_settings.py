from pathlib import Path

import pytest

from services.postprocess.settings import DEFAULT_POLICY_DIR, PostprocessSettings


def test_defaults_serve_the_shipped_policies() -> None:
    settings = PostprocessSettings()

    assert (settings.port, settings.metrics_port) == (50071, 9466)
    assert settings.policy_dir == DEFAULT_POLICY_DIR
    assert (settings.policy_dir / f"{settings.fallback_policy}.yaml").is_file()


def test_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCOREGRAPH_POSTPROCESS_POLICY_DIR", str(tmp_path))
    monkeypatch.setenv("SCOREGRAPH_POSTPROCESS_FALLBACK_POLICY", "fraud_gbm")
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_PORT", "7000")

    settings = PostprocessSettings()

    assert settings.policy_dir == tmp_path
    assert settings.fallback_policy == "fraud_gbm"
    assert settings.port == 50071
