"""The registry against SQLite and PostgreSQL: migrations, idempotent registration, states and
the audit trail, each change whole or absent.

PostgreSQL is the local server (`GATEWAY_TEST_POSTGRES_URL`, default 127.0.0.1:5432 with
trust auth; `scripts/test.sh` starts it when it is down): each test gets a new database.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, inspect

from gateway.errors import AdapterNotFound, Conflict
from gateway.registry import database
from gateway.registry.schema import AuditEvent, VersionState
from gateway.registry.store import Registry, VersionSpec

TABLES = {"adapters", "adapter_versions", "audit_events"}


def _spec(content: str = "a", rank: int = 8) -> VersionSpec:
    return VersionSpec(
        path=f"pirate/{content}",
        sha256=(content * 64)[:64],
        base_model="smollm2-135m-instruct",
        rank=rank,
        target_modules=["q_proj", "v_proj"],
        manifest={"dataset": "pirate.jsonl", "steps": 30},
    )


@pytest.fixture
def registry(engine: Engine) -> Registry:
    database.upgrade(engine)
    return Registry(database.session_factory(engine))


def test_migrations_create_the_schema_and_are_idempotent(engine: Engine) -> None:
    database.upgrade(engine)
    database.upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_downgrade_to_base_removes_the_tables_and_upgrade_restores_them(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    database.upgrade(engine)
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert not TABLES & set(inspect(engine).get_table_names())

    database.upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_first_registration_is_version_one_with_its_audit_event(registry: Registry) -> None:
    got = registry.register("pirate", _spec(), actor="admin", reason="first train")

    assert got.created
    assert got.version.version == 1
    assert got.version.state == VersionState.REGISTERED
    assert got.version.manifest == {"dataset": "pirate.jsonl", "steps": 30}
    events = registry.audit("pirate")
    assert [(e.action, e.version, e.actor, e.reason) for e in events] == [
        ("register", 1, "admin", "first train")
    ]


def test_same_content_twice_is_the_same_version_and_one_event(registry: Registry) -> None:
    first = registry.register("pirate", _spec("a"), actor="admin")
    again = registry.register("pirate", _spec("a"), actor="admin")

    assert again.version.version == first.version.version == 1
    assert not again.created
    assert len(registry.audit("pirate")) == 1


def test_new_content_under_a_name_is_the_next_version(registry: Registry) -> None:
    registry.register("pirate", _spec("a"), actor="admin")
    second = registry.register("pirate", _spec("b"), actor="admin")
    other = registry.register("french", _spec("a"), actor="admin")

    assert second.created and second.version.version == 2
    assert other.version.version == 1
    assert [a.name for a in registry.adapters()] == ["french", "pirate"]
    assert [v.version for v in registry.adapters()[1].versions] == [1, 2]


def test_concurrent_registrations_of_one_content_make_one_version(registry: Registry) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda _: registry.register("shout", _spec("c"), actor="a"), range(8))
        )

    assert {r.version.version for r in results} == {1}
    assert sum(r.created for r in results) == 1
    assert len(registry.audit("shout")) == 1


def test_a_failure_inside_a_registration_leaves_nothing_behind(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: AuditEvent, **kwargs: object) -> None:
        raise RuntimeError("process died while writing the audit event")

    monkeypatch.setattr(AuditEvent, "__init__", crash)
    with pytest.raises(RuntimeError):
        registry.register("pirate", _spec(), actor="admin")
    monkeypatch.undo()

    assert registry.adapters() == []
    assert registry.audit() == []
    assert registry.register("pirate", _spec(), actor="admin").version.version == 1


def test_state_changes_follow_the_lifecycle_and_are_audited(registry: Registry) -> None:
    registry.register("pirate", _spec(), actor="admin")

    registry.set_state("pirate", 1, VersionState.LOADING, actor="gateway")
    registry.set_state("pirate", 1, VersionState.READY, actor="gateway", reason="replica r0")
    registry.set_state("pirate", 1, VersionState.RETIRED, actor="admin")

    assert registry.version("pirate", 1).state == VersionState.RETIRED
    actions = [(e.action, e.detail.get("from")) for e in registry.audit("pirate")]
    assert actions == [
        ("register", None),
        ("state:loading", "registered"),
        ("state:ready", "loading"),
        ("state:retired", "ready"),
    ]


def test_retired_is_final_and_refused_changes_write_nothing(registry: Registry) -> None:
    registry.register("pirate", _spec(), actor="admin")
    registry.set_state("pirate", 1, VersionState.RETIRED, actor="admin")

    with pytest.raises(Conflict) as refused:
        registry.set_state("pirate", 1, VersionState.LOADING, actor="gateway")

    assert refused.value.status_code == 409
    assert registry.version("pirate", 1).state == VersionState.RETIRED
    assert len(registry.audit("pirate")) == 2


def test_newest_servable_version_skips_retired_ones(registry: Registry) -> None:
    registry.register("pirate", _spec("a"), actor="admin")
    registry.register("pirate", _spec("b"), actor="admin")
    assert registry.version("pirate").version == 2

    registry.set_state("pirate", 2, VersionState.RETIRED, actor="admin")

    assert registry.version("pirate").version == 1


def test_unknown_adapters_and_versions_are_not_found(registry: Registry) -> None:
    registry.register("pirate", _spec(), actor="admin")

    with pytest.raises(AdapterNotFound):
        registry.version("french")
    with pytest.raises(AdapterNotFound):
        registry.version("pirate", 7)
    with pytest.raises(AdapterNotFound):
        registry.set_state("pirate", 7, VersionState.READY, actor="gateway")
