"""Connecting to the registry's database and bringing its schema up to date (Alembic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def default_url(state_dir: Path) -> str:
    """The embedded default: a SQLite file in the gateway's state directory."""
    return f"sqlite:///{state_dir.resolve() / 'registry.db'}"


def make_engine(url: str) -> Engine:
    """An engine for `url` (SQLite with foreign keys enforced, or PostgreSQL via psycopg)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(connection: Any, _record: Any) -> None:
            connection.execute("PRAGMA foreign_keys=ON")

    return engine


# PostgreSQL advisory lock key held while the schema is brought up to date ("lgw-mig").
MIGRATION_LOCK = 0x6C67772D6D6967


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` (idempotent: an up-to-date schema is left alone).

    On PostgreSQL one process at a time does it: gateway replicas starting together wait for
    the first one's transaction (an advisory lock), then find the schema current."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
