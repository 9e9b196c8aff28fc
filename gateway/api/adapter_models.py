"""Bodies and answers of the adapter admin API (`/admin/adapters`, `/admin/audit`).

Bodies refuse unknown fields. Answers are built from the lifecycle's views.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.lifecycle import AdapterView, VersionView

_Reason = Field(default="", max_length=1024)


class AdminBody(BaseModel):
    """A request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class RegisterBody(AdminBody):
    """Register a version: files under the adapter root and what the pipeline says of them."""

    name: str = Field(min_length=1, max_length=63)
    # Relative to the gateway's adapter root; `..`, absolute paths and escaping links are refused.
    path: str = Field(min_length=1, max_length=1024)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    base_model: str | None = Field(default=None, max_length=256)
    manifest: dict[str, Any] = Field(default_factory=dict)
    # False: a first version waits unserved under its name (a pipeline evaluates it as
    # `name@N` first, then makes it stable).
    serve_first: bool = True
    reason: str = _Reason


class LoadBody(AdminBody):
    """Load a version into every replica now; `pin` keeps it there."""

    pin: bool = False
    reason: str = _Reason


class ReasonBody(AdminBody):
    """Why (kept in the audit trail)."""

    reason: str = _Reason


class VersionOut(BaseModel):
    """One adapter version as the admin API shows it."""

    name: str
    version: int
    ref: str
    state: str
    path: str
    sha256: str
    base_model: str
    rank: int
    target_modules: list[str]
    manifest: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    pinned: bool
    resident_on: list[str]

    @classmethod
    def of(cls, view: VersionView) -> VersionOut:
        """From the lifecycle's view of a version."""
        row, name = view.row, view.name
        return cls(
            name=name,
            version=row.version,
            ref=f"{name}@{row.version}",
            state=row.state.value,
            path=row.path,
            sha256=row.sha256,
            base_model=row.base_model,
            rank=row.rank,
            target_modules=list(row.target_modules),
            manifest=dict(row.manifest),
            created_at=row.created_at,
            updated_at=row.updated_at,
            pinned=row.pinned,
            resident_on=view.resident_on,
        )


class AdapterOut(BaseModel):
    """An adapter with every version."""

    name: str
    created_at: datetime
    versions: list[VersionOut]

    @classmethod
    def of(cls, view: AdapterView) -> AdapterOut:
        """From the lifecycle's view of an adapter."""
        versions = [VersionOut.of(v) for v in view.versions]
        return cls(name=view.name, created_at=view.created_at, versions=versions)


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]


class DeletedOut(BaseModel):
    deleted: bool = True
    name: str
    version: int


class AuditOut(BaseModel):
    """One audit event: what, who, when, why."""

    id: int
    at: datetime
    actor: str
    action: str
    adapter: str
    version: int | None
    reason: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: object) -> AuditOut:
        """From an audit event (any object with these attributes)."""
        return cls.model_validate(event, from_attributes=True)


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditOut]
