"""The registry's databases: each test gets a new SQLite file and a new PostgreSQL database.

PostgreSQL is the local server (`GATEWAY_TEST_POSTGRES_URL`, default 127.0.0.1:5432 with
trust auth; `scripts/test.sh` starts it when it is down).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from gateway.registry import database

ADMIN_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = database.default_url(tmp_path)
        engine = database.make_engine(url)
        yield engine
        engine.dispose()
        return
    name = f"gw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = database.make_engine(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
