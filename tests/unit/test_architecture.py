"""The dependency rules of docs/architecture.md, read off the source: imports point one way.

(The engine package's own rule, no import cycle, is in tests/unit/engine/test_import_cycles.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
# What the top level holds besides the part packages.
TOP_LEVEL_MODULES = {
    "__init__.py",
    "app.py",
    "config.py",
    "errors.py",
    "metrics.py",
    "catalog.py",
    "lifecycle.py",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_under(package: str) -> dict[str, set[str]]:
    return {
        module_name(path): imports_of(path)
        for path in sorted((GATEWAY / package).rglob("*.py"))
        if "migrations" not in path.parts
    }


def offenders(package: str, forbidden: str) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in modules_under(package).items()
        for name in sorted(names)
        if name == forbidden or name.startswith(forbidden + ".")
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("api", "gateway.registry"),
        ("upstream", "gateway.routing"),
        ("upstream", "gateway.rollout"),
        ("upstream", "gateway.lifecycle"),
        ("registry", "gateway.lifecycle"),
        ("registry", "gateway.rollout"),
        ("routing", "gateway.rollout"),
        ("registry", "gateway.quality"),
        ("registry", "gateway.analysis"),
        ("analysis", "gateway.api"),
        ("hooks", "gateway.api"),
        ("hooks", "gateway.rollout"),
        ("quality", "gateway.api"),
        ("quality", "gateway.rollout"),
        ("rollout", "gateway.api"),
        (".", "adapters"),
    ],
)
def test_a_part_imports_nothing_above_it(package: str, forbidden: str) -> None:
    assert offenders(package, forbidden) == []


def test_the_catalogue_is_a_leaf() -> None:
    gateway_imports = {n for n in imports_of(GATEWAY / "catalog.py") if n.startswith("gateway")}
    assert gateway_imports <= {"gateway.errors", "gateway.errors.ModelNotFound"}


def test_no_route_module_imports_another() -> None:
    routes = {
        "admin_adapters",
        "admin_rollouts",
        "admin_route_table",
        "admin_usage",
        "feedback",
        "openai",
        "health",
    }
    modules = modules_under("api")
    found = [
        f"{module} imports {name}"
        for module, names in modules.items()
        for name in names
        for route in routes
        if name == f"gateway.api.{route}" or name.startswith(f"gateway.api.{route}.")
    ]
    assert found == []


def test_every_dependency_provider_lives_in_deps() -> None:
    """Route modules use the `Annotated` aliases of deps.py; nothing else calls `Depends`."""
    calls = []
    for path in sorted((GATEWAY / "api").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Depends":
                calls.append(path.name)
    assert calls and set(calls) == {"deps.py"}, calls


def test_the_top_level_holds_the_factory_settings_errors_metrics_catalogue_and_lifecycle() -> None:
    modules = {p.name for p in GATEWAY.glob("*.py")}
    assert modules == TOP_LEVEL_MODULES
