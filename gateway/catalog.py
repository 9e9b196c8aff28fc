"""The model catalogue: which names a client may put in `model`, and what each means.

A leaf: every part that names an adapter version (the pool, the lifecycle, rollouts, the API)
spells it through this module, and this module imports nothing of theirs.

`model` is one of:
- the base model's name: no adapter;
- an adapter name (`"pirate"`): its stable version (the first registered, or the last
  promoted); when that one cannot serve, the newest servable version;
- a pinned version (`"pirate@1"`): exactly that version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ModelNotFound

log = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,8})$")
BASE_LABEL = "base"
# Adapter names may not contain `--`, so `name--vN` splits back into one name and version.
_ENGINE_NAME = re.compile(rf"^({ADAPTER_NAME.pattern[1:-1]})--v([1-9][0-9]*)$")


def engine_name(name: str, version: int) -> str:
    """The name vLLM knows `name@version` by: `name--vN` (the only place it is spelt)."""
    return f"{name}--v{version}"


def parse_engine_name(served: str) -> tuple[str, int] | None:
    """`(name, version)` of an engine name made by `engine_name`; None for anything else
    (the base model, or an adapter someone else loaded into the engine)."""
    match = _ENGINE_NAME.match(served)
    if match is None or "--" in match.group(1):
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class AdapterVersion:
    """One servable version of an adapter."""

    name: str
    version: int
    path: Path
    # sha256 of its files at registration (checked again before every load); "" if unknown.
    sha256: str = ""

    @property
    def engine_name(self) -> str:
        """The name vLLM knows this version by."""
        return engine_name(self.name, self.version)

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to."""

    engine_model: str
    adapter: AdapterVersion | None
    route: str
    # `name@N`: exactly that version, whatever rollout the route is in.
    exact: bool = False

    @property
    def adapter_label(self) -> str:
        """Metric and header label: the adapter name, or `base`."""
        return self.adapter.name if self.adapter else BASE_LABEL

    @property
    def version_label(self) -> str:
        """Metric label: the adapter version, or empty for the base model."""
        return str(self.adapter.version) if self.adapter else ""

    @property
    def served(self) -> str:
        """Header value naming what served the request: `name@version` or `base`."""
        return self.adapter.ref if self.adapter else BASE_LABEL


class ModelCatalog:
    """Resolves `model` fields against the base model and the known adapter versions."""

    def __init__(
        self,
        base_model: str,
        adapters: Iterable[AdapterVersion] = (),
        stable: Mapping[str, int | None] | None = None,
    ) -> None:
        self.base_model = base_model
        self._stable = dict(stable or {})
        self._versions: dict[str, dict[int, AdapterVersion]] = {}
        for adapter in adapters:
            self._versions.setdefault(adapter.name, {})[adapter.version] = adapter
        self._targets = self._build_targets()

    def _build_targets(self) -> dict[str, Target]:
        base = Target(engine_model=self.base_model, adapter=None, route=self.base_model)
        targets = {self.base_model: base}
        for name, versions in self._versions.items():
            for version in versions.values():
                targets[version.ref] = Target(version.engine_name, version, name, exact=True)
            if name in self._stable and self._stable[name] is None:
                # Registered to be evaluated as `name@N` first: the name serves nothing yet.
                continue
            chosen = versions.get(self._stable.get(name) or 0) or versions[max(versions)]
            targets[name] = Target(chosen.engine_name, chosen, route=name)
        return targets

    def resolve(self, model: str) -> Target:
        """Map a `model` field to its target; raise ModelNotFound for anything unknown."""
        target = self._targets.get(model)
        if target is None:
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return target

    def version(self, name: str, version: int) -> AdapterVersion | None:
        """One servable version, or None."""
        return self._versions.get(name, {}).get(version)

    def adapter_versions(self) -> list[AdapterVersion]:
        """Every known adapter version, ordered by name then version."""
        return [
            self._versions[name][v]
            for name in sorted(self._versions)
            for v in sorted(self._versions[name])
        ]

    def model_ids(self) -> list[tuple[str, Target]]:
        """Every accepted `model` value with its target, base first."""
        return sorted(self._targets.items(), key=lambda kv: (kv[0] != self.base_model, kv[0]))


class CatalogView:
    """The current catalogue; replaced whole when the registry changes (readers never lock)."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.current = catalog


def scan_adapter_root(root: Path) -> list[AdapterVersion]:
    """Find `<root>/<name>/v<N>/adapter_config.json` adapter versions."""
    found: list[AdapterVersion] = []
    if not root.is_dir():
        return found
    for name_dir in sorted(root.iterdir()):
        if not name_dir.is_dir() or not ADAPTER_NAME.match(name_dir.name) or "--" in name_dir.name:
            continue
        for version_dir in sorted(name_dir.iterdir()):
            match = _VERSION_DIR.match(version_dir.name)
            if not match or not (version_dir / "adapter_config.json").is_file():
                continue
            found.append(AdapterVersion(name_dir.name, int(match.group(1)), version_dir.resolve()))
    log.info("found %s adapter versions under %s", len(found), root)
    return found
