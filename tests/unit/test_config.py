from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import Settings


def test_environment_sets_nested_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ENGINE__MAX_LORAS", "8")
    monkeypatch.setenv("GATEWAY_ENGINE__CHECKPOINT", "w4a16")
    monkeypatch.setenv("GATEWAY_CACHE_DIR", "/cache")
    settings = Settings()
    assert settings.engine.max_loras == 8
    assert settings.resolved_model_dir == Path("/cache/models/smollm2-135m-instruct-w4a16")
    assert settings.resolved_adapter_root == Path("/cache/adapters")
    assert settings.managed_engine
    assert settings.upstreams == ["http://127.0.0.1:8001"]


def test_upstream_urls_mean_unmanaged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_URLS", '["http://10.0.0.5:8000/"]')
    settings = Settings()
    assert not settings.managed_engine
    assert settings.upstreams == ["http://10.0.0.5:8000"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_UPSTREAM_URLS", '["ftp://x"]'),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_ENGINE__CHECKPOINT", "fp4"),
        ("GATEWAY_ENGINE__MAX_LORAS", "0"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
