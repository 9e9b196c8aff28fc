"""The gateway's settings as a command reads them: a bad setting is one line naming its
environment variable, then exit 2, never a traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import typer
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from gateway.cli.client import err_console
from gateway.config import Settings

# Exit status for a configuration the gateway refuses (2, as click uses for bad usage).
CONFIG_ERROR = 2

# pydantic-settings names the field only in the message of the error it raises when a
# value cannot be decoded (malformed JSON, say).
_SETTINGS_ERROR_FIELD = re.compile(r'field "(\w+)"')


def load_settings() -> Settings:
    """`Settings()` from the environment; on bad settings print each problem and exit 2."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        for problem in describe_settings_error(exc):
            # Not markup: locations such as `[0].name` are printed as they are.
            err_console.print(
                f"error: {problem}", style="red", markup=False, soft_wrap=True, highlight=False
            )
        raise typer.Exit(CONFIG_ERROR) from None


def describe_settings_error(error: ValidationError | SettingsError) -> list[str]:
    """One `ENV_VAR: what is wrong` line per problem."""
    if isinstance(error, SettingsError):
        return [_describe_decoding(error)]
    # The input is left out on purpose: values such as GATEWAY_DATABASE_URL hold passwords.
    return [
        f"{_locate(detail['loc'])}: {detail['msg'].removeprefix('Value error, ')}"
        for detail in error.errors(include_url=False)
    ]


def env_var(path: Sequence[str]) -> str:
    """The environment variable of a (nested) field, e.g. `GATEWAY_ENGINE__MAX_LORAS`."""
    config = Settings.model_config
    delimiter = config.get("env_nested_delimiter") or "__"
    return (config.get("env_prefix", "") + delimiter.join(path)).upper()


def _locate(loc: Sequence[int | str]) -> str:
    """`ENV_VAR` of an error location, plus the path inside the value when it is a list
    item or a key of a JSON object (`GATEWAY_TENANT_KEYS: [0].key_sha256`)."""
    # Nested groups (engine, routing, ...) have a variable per field; anything below a field
    # that is not a group lives inside that variable's (JSON) value.
    group: type[BaseModel] | None = Settings
    fields: list[str] = []
    for part in loc:
        if group is None or not isinstance(part, str):
            break
        fields.append(part)
        group = _group(group, part)
    if not fields:
        return "settings"
    rest = loc[len(fields) :]
    inside = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
    return env_var(fields) + (f": {inside.removeprefix('.')}" if inside else "")


def _group(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The settings group field `name` of `model` holds (None: a plain value)."""
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _describe_decoding(error: SettingsError) -> str:
    found = _SETTINGS_ERROR_FIELD.search(str(error))
    cause = error.__cause__
    reason = str(cause or error)
    if isinstance(cause, json.JSONDecodeError):
        reason = f"not valid JSON ({cause})"
    if found is None:
        return reason
    name = found[1]
    if _group(Settings, name) is not None:
        # The group is read from `GATEWAY_ENGINE` and every `GATEWAY_ENGINE__*`; pydantic
        # does not say which of them failed.
        return f"{env_var([name])} or {env_var([name, '*'])}: {reason}"
    return f"{env_var([name])}: {reason}"
