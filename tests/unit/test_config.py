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


def test_lora_ops_default_to_grouped_and_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.engine.lora_ops == "grouped"
    assert settings.engine.lora_compile is True
    monkeypatch.setenv("GATEWAY_ENGINE__LORA_OPS", "vllm")
    monkeypatch.setenv("GATEWAY_ENGINE__LORA_COMPILE", "false")
    settings = Settings()
    assert settings.engine.lora_ops == "vllm"
    assert settings.engine.lora_compile is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_UPSTREAM_URLS", '["ftp://x"]'),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_ENGINE__CHECKPOINT", "fp4"),
        ("GATEWAY_ENGINE__MAX_LORAS", "0"),
        ("GATEWAY_ENGINE__LORA_OPS", "triton"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_managed_engine_gets_the_lora_ops_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.app import _engine_supervisor
    from gateway.metrics import Metrics

    monkeypatch.setenv("GATEWAY_ENGINE__LORA_OPS", "vllm")
    monkeypatch.setenv("GATEWAY_ENGINE__LORA_COMPILE", "0")
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path))
    supervisor = _engine_supervisor(Settings(), Metrics(CollectorRegistry()))

    assert supervisor is not None
    env = supervisor.engine.spec.environment()
    assert env["LORA_GATEWAY_LORA_OPS"] == "vllm"
    assert env["LORA_GATEWAY_LORA_COMPILE"] == "0"


def test_an_admin_key_that_is_also_a_tenant_key_is_refused() -> None:
    digest = "c" * 64
    with pytest.raises(ValidationError) as refused:
        Settings(
            admin_key_sha256=digest,
            tenant_keys=[{"name": "team-a", "key_sha256": digest.upper()}],
        )
    (error,) = refused.value.errors()
    assert error["loc"] == ("tenant_keys",)
    assert "tenant key 'team-a' has the admin key's sha256" in error["msg"]


@pytest.mark.parametrize(
    ("database_url", "poll_s", "expected"),
    [
        (None, None, 0.5),
        ("postgresql://u@127.0.0.1:5432/db", None, 30.0),
        ("postgresql://u@127.0.0.1:5432/db", 60.0, 60.0),
        (None, 0.2, 0.2),
    ],
)
def test_the_registry_poll_is_fast_on_sqlite_and_a_safety_net_on_postgresql(
    tmp_path: Path, database_url: str | None, poll_s: float | None, expected: float
) -> None:
    settings = Settings(state_dir=tmp_path, database_url=database_url, registry_poll_s=poll_s)
    assert settings.resolved_registry_poll_s == expected


@pytest.mark.parametrize(
    ("flags", "checkpoint", "directory", "dtype"),
    [
        # AVX2 only: no int8 dot products, float32 is faster.
        ({"avx2", "fma"}, "float32", "bf16", "float32"),
        ({"avx2", "avx512f", "avx512_vnni"}, "w8a8", "w8a8", None),
        ({"avx2", "avx_vnni"}, "w8a8", "w8a8", None),
        ({"avx2", "avx512f", "amx_int8", "amx_bf16"}, "w8a8", "w8a8", None),
    ],
)
def test_auto_checkpoint_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: set[str],
    checkpoint: str,
    directory: str,
    dtype: str | None,
) -> None:
    from gateway.engine import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setenv("GATEWAY_CACHE_DIR", str(tmp_path))
    settings = Settings()
    assert settings.engine.checkpoint == "auto"
    assert settings.resolved_checkpoint == checkpoint
    assert settings.resolved_model_dir == tmp_path / "models" / f"smollm2-135m-instruct-{directory}"
    assert settings.resolved_engine_dtype == dtype


def test_a_chosen_checkpoint_or_dtype_wins_over_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.engine import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("GATEWAY_ENGINE__CHECKPOINT", "w8a8")
    assert (Settings().resolved_checkpoint, Settings().resolved_engine_dtype) == ("w8a8", None)
    monkeypatch.setenv("GATEWAY_ENGINE__CHECKPOINT", "float32")
    monkeypatch.setenv("GATEWAY_ENGINE__DTYPE", "bfloat16")
    assert Settings().resolved_engine_dtype == "bfloat16"
    monkeypatch.delenv("GATEWAY_ENGINE__DTYPE")
    # A model of your own is served as vLLM reads it unless a dtype is given.
    monkeypatch.setenv("GATEWAY_ENGINE__MODEL_DIR", str(tmp_path / "mine"))
    assert Settings().resolved_engine_dtype is None
    assert Settings().resolved_model_dir == tmp_path / "mine"


def test_cpu_flags_read_the_first_cpu(tmp_path: Path) -> None:
    from gateway.engine.cpu import auto_checkpoint, cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512_vnni\n\nprocessor : 1\nflags : fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert auto_checkpoint(cpu_flags(info)) == "w8a8"
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert auto_checkpoint(frozenset()) == "float32"
