"""One analysis leader among the gateway replicas of one registry.

- PostgreSQL: a session advisory lock, held on a connection of its own. When the leader's
  process dies (kill -9 included) its connection closes and PostgreSQL releases the lock;
  the next replica to try (each tries at every look, once a second) leads from then on.
- SQLite: an exclusive `flock` on a file beside the database (the operating system
  releases it with the process). Replicas on one SQLite file share one machine.

Leading is checked at every look: a leader whose lock connection broke (the database
restarted) stops acting until it holds the lock again. Every action is also guarded in its
own transaction (`RolloutManager.command(expect=...)`), so even two replicas that both
believed they led could not apply one verdict twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
# The advisory lock's key: the first 8 bytes of a hash of a fixed name, as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"lora-gateway:analysis").digest()[:8], "big", signed=True)


class Leadership:
    """Whether this process leads the analysis; `hold()` tries to lead or checks it still does."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None
        self.leading = False

    async def hold(self) -> bool:
        """Lead if nobody does; keep leading if this process does (False: another leads)."""
        was = self.leading
        self.leading = await asyncio.to_thread(self._hold)
        if self.leading != was:
            log.info("analysis leader: %s", "this replica" if self.leading else "another replica")
        return self.leading

    async def release(self) -> None:
        """Stop leading (at shutdown)."""
        await asyncio.to_thread(self._release)
        self.leading = False

    def _hold(self) -> bool:
        if self._engine.dialect.name == "postgresql":
            return self._hold_postgres()
        return self._hold_file()

    def _hold_postgres(self) -> bool:
        try:
            if self._connection is not None:
                self._connection.execute(text("SELECT 1"))
                return True
            connection = self._engine.connect()
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}
            ).scalar()
            connection.commit()
            if got:
                self._connection = connection
                return True
            connection.close()
            return False
        except SQLAlchemyError as exc:
            log.warning("the analysis lock's connection failed: %s", exc)
            self._drop_connection()
            return False

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()
                self._connection.close()
        self._connection = None

    def _hold_file(self) -> bool:
        if self._file is not None:
            return True
        path = _lock_path(self._engine)
        if path is None:
            return True  # an in-memory database: one process by definition
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def _release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                self._connection.commit()
            self._drop_connection()
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _lock_path(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + ".analysis.lock")
