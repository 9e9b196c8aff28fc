from __future__ import annotations

from pathlib import Path

import pytest

from gateway.catalog import (
    AdapterVersion,
    ModelCatalog,
    engine_name,
    parse_engine_name,
    scan_adapter_root,
)
from gateway.errors import ModelNotFound


def make_adapter(root: Path, name: str, version: int) -> Path:
    path = root / name / f"v{version}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_scan_finds_versions_and_ignores_junk(tmp_path: Path) -> None:
    make_adapter(tmp_path, "pirate", 1)
    make_adapter(tmp_path, "pirate", 2)
    make_adapter(tmp_path, "french", 1)
    (tmp_path / "pirate" / "v3").mkdir()  # no adapter_config.json
    (tmp_path / "pirate" / "latest").mkdir()
    make_adapter(tmp_path, "Bad Name", 1)
    make_adapter(tmp_path, "a--b", 1)  # would clash with engine names
    make_adapter(tmp_path, "zero", 0)
    found = scan_adapter_root(tmp_path)
    assert [(a.name, a.version) for a in found] == [("french", 1), ("pirate", 1), ("pirate", 2)]


def test_scan_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert scan_adapter_root(tmp_path / "none") == []


PIRATES = [AdapterVersion("pirate", v, Path(f"/p{v}")) for v in (1, 2, 3)]


@pytest.mark.parametrize(
    ("stable", "served"),
    [
        ({"pirate": 2}, "pirate--v2"),
        ({"pirate": 7}, "pirate--v3"),
        ({}, "pirate--v3"),
    ],
)
def test_name_resolves_to_its_stable_version_else_the_newest_servable(
    stable: dict[str, int | None], served: str
) -> None:
    catalog = ModelCatalog("base", PIRATES, stable)
    assert catalog.resolve("pirate").engine_model == served
    # A pinned version is exact whatever the stable version is.
    assert catalog.resolve("pirate@1").engine_model == "pirate--v1"


def test_a_name_whose_stable_version_is_unset_serves_nothing_but_its_pins_do() -> None:
    # A first version registered with `serve_first: false` waits to be evaluated.
    catalog = ModelCatalog("base", PIRATES, {"pirate": None})
    with pytest.raises(ModelNotFound):
        catalog.resolve("pirate")
    assert catalog.resolve("pirate@2").engine_model == "pirate--v2"


def test_name_without_stable_version_resolves_to_newest_and_pins_resolve_exactly() -> None:
    catalog = ModelCatalog(
        "base",
        [
            AdapterVersion("pirate", 1, Path("/p1")),
            AdapterVersion("pirate", 10, Path("/p10")),
            AdapterVersion("pirate", 2, Path("/p2")),
        ],
    )
    assert catalog.resolve("pirate").engine_model == "pirate--v10"
    assert catalog.resolve("pirate@2").engine_model == "pirate--v2"
    base = catalog.resolve("base")
    assert base.adapter is None and base.served == "base" and base.version_label == ""


@pytest.mark.parametrize("model", ["", "Pirate", "pirate@3", "pirate@v1", "pirate--v1", "base@1"])
def test_unknown_models_raise_not_found(model: str) -> None:
    catalog = ModelCatalog("base", [AdapterVersion("pirate", 1, Path("/p1"))])
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve(model)
    assert info.value.status_code == 404 and info.value.param == "model"


def test_model_ids_list_base_first() -> None:
    catalog = ModelCatalog("base", [AdapterVersion("a", 1, Path("/a1"))])
    assert [m for m, _ in catalog.model_ids()] == ["base", "a", "a@1"]


@pytest.mark.parametrize(("name", "version"), [("pirate", 1), ("a.b_c-d", 12), ("x", 999999999)])
def test_an_engine_name_reads_back_as_its_name_and_version(name: str, version: int) -> None:
    made = engine_name(name, version)
    assert made == f"{name}--v{version}"
    assert parse_engine_name(made) == (name, version)
    assert AdapterVersion(name, version, Path("/x")).engine_name == made


@pytest.mark.parametrize(
    "served", ["smollm2", "pirate", "pirate@1", "pirate--v0", "pirate--v", "a--b--v1", "Pirate--v1"]
)
def test_names_the_gateway_did_not_make_are_not_engine_names(served: str) -> None:
    assert parse_engine_name(served) is None
