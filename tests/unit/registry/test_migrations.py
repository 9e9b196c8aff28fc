"""Gateway replicas starting together on one empty PostgreSQL database: each brings the
schema up to date at start, one at a time, and every one of them starts."""

from __future__ import annotations

import threading

from sqlalchemy import text

from gateway.registry.database import make_engine, upgrade
from gateway.testing.processes import postgres_database


def test_concurrent_upgrades_on_postgresql_all_succeed_and_migrate_once() -> None:
    with postgres_database("migrate") as url:
        engines = [make_engine(url) for _ in range(4)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(engines))

        def start(index: int) -> None:
            barrier.wait()
            try:
                upgrade(engines[index])
            except BaseException as exc:  # collected: the test reports every failure
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(len(engines))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert not any(t.is_alive() for t in threads), "an upgrade hung (a lock cycle?)"
        assert errors == []
        with engines[0].connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1
        for engine in engines:
            engine.dispose()
