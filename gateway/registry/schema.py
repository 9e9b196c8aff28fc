"""Tables of the adapter registry (SQLAlchemy 2 declarative; migrations in `migrations/`).

An adapter is a name clients put in `model`; it has numbered versions. A version points at
its files (a directory under an adapter root), records what they are (sha256, base model,
rank, target modules, the pipeline's manifest) and where it is in its life (`VersionState`).
Every change is an `AuditEvent`. Route tables of `model: "auto"` are kept whole, one row per
replacement (`RouteTableRow`; the newest is in use).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Dialect, Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite keeps no zone: add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class VersionState(enum.StrEnum):
    """Where an adapter version is in its life."""

    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
    }


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[AdapterVersionRow]] = relationship(
        back_populates="adapter", order_by="AdapterVersionRow.version"
    )


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version", name="uq_adapter_version"),
        # The same files under the same name are the same version (idempotent registration).
        UniqueConstraint("adapter_id", "sha256", name="uq_adapter_content"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int]
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(256))
    rank: Mapped[int]
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[VersionState] = mapped_column(
        Enum(VersionState, name="version_state", values_callable=lambda e: [m.value for m in e]),
        default=VersionState.REGISTERED,
    )
    # Never evicted from a replica (an operator or an active rollout needs it resident).
    pinned: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Always loaded with the version: rows are read after their session closed.
    adapter: Mapped[Adapter] = relationship(back_populates="versions", lazy="joined")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    adapter: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int | None]
    reason: Mapped[str] = mapped_column(String(1024), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RouteTableRow(Base):
    __tablename__ = "route_tables"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The table as the operator wrote it (YAML), comments and all.
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    # Route name -> the adapter it served, for the trail.
    routes: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
