"""Settings errors as commands print them: one line per problem, named by its variable."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.cli.settings import describe_settings_error, env_var
from gateway.config import Settings


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)) as refused:
        Settings()
    assert isinstance(refused.value, ValidationError | SettingsError)
    return describe_settings_error(refused.value)


def test_env_var_joins_nested_fields_with_the_delimiter() -> None:
    assert env_var(["port"]) == "GATEWAY_PORT"
    assert env_var(["engine", "max_loras"]) == "GATEWAY_ENGINE__MAX_LORAS"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT: Input should be less than or equal to 65535"),
        (
            {"GATEWAY_ROUTING__MAX_TOKENS": "x"},
            "GATEWAY_ROUTING__MAX_TOKENS: Input should be a valid integer, unable to parse "
            "string as an integer",
        ),
        (
            {"GATEWAY_ENGINE__NO_SUCH_THING": "1"},
            "GATEWAY_ENGINE__NO_SUCH_THING: Extra inputs are not permitted",
        ),
        (
            {"GATEWAY_UPSTREAM_URLS": "ftp://x"},
            "GATEWAY_UPSTREAM_URLS: upstream URL must start with http:// or https://: 'ftp://x'",
        ),
        (
            {"GATEWAY_TENANT_KEYS": '{"name": "a"}'},
            "GATEWAY_TENANT_KEYS: Input should be a valid list",
        ),
        (
            {"GATEWAY_TENANT_KEYS": '[{"name": "a"}]'},
            "GATEWAY_TENANT_KEYS: [0].key_sha256: Field required",
        ),
    ],
)
def test_a_problem_is_named_by_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    assert problems(monkeypatch, **env) == [expected]


def test_every_problem_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(monkeypatch, GATEWAY_PORT="0", GATEWAY_ENGINE__MAX_LORAS="0")
    assert [line.split(":")[0] for line in found] == ["GATEWAY_PORT", "GATEWAY_ENGINE__MAX_LORAS"]


def test_the_refused_value_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Values such as GATEWAY_DATABASE_URL carry passwords.
    (line,) = problems(monkeypatch, GATEWAY_PORT="hunter2")
    assert "hunter2" not in line


def test_malformed_json_in_a_group_names_the_group_and_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (line,) = problems(monkeypatch, GATEWAY_ENGINE__EXTRA_ARGS="[--enforce-eager")
    assert line.startswith("GATEWAY_ENGINE or GATEWAY_ENGINE__*: not valid JSON (Expecting value")
