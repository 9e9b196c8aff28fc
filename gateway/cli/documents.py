"""What the command groups of whole documents (`scorers`, `slos`) share: `show` reads the
one in use, `apply` reads a file (or `demo`) and puts it; both print it the group's way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import RenderableType

from gateway.cli.client import Json, emit, fail, request

DryRun = Annotated[bool, typer.Option("--dry-run", help="Only check it.")]
ReasonText = Annotated[str, typer.Option(help="Why; kept in the audit log.")]
ShowSource = Annotated[bool, typer.Option("--source", help="Print the YAML.")]


@dataclass(frozen=True)
class DocumentApi:
    """One kind of document on the admin API: its path, how a file (or `demo`) is read, and
    how an answer is printed (given `in use:`, `checked` or `applied`)."""

    path: str
    read: Callable[[str], str]
    render: Callable[[Json, str], Sequence[RenderableType]]

    def show(self, url: str, admin_key: str | None, *, as_json: bool, source: bool) -> None:
        """Print the document in use (its YAML only, with `source`)."""
        payload = request(url, admin_key, "GET", self.path).json()
        if source and not as_json:
            typer.echo(payload["source"], nl=False)
            return
        emit(payload, as_json, *self.render(payload, "in use:"))

    def apply(
        self,
        url: str,
        admin_key: str | None,
        where: str,
        *,
        as_json: bool,
        dry_run: bool,
        reason: str,
    ) -> None:
        """Put the file at `where` (or only check it) and print the answer."""
        try:
            text = self.read(where)
        except OSError as exc:
            fail(f"cannot read {where}: {exc.strerror or exc}")
        response = request(
            url,
            admin_key,
            "PUT",
            self.path,
            params={"dry_run": str(dry_run).lower(), "reason": reason},
            content=text.encode(),
            content_type="application/yaml",
        )
        payload = response.json()
        emit(payload, as_json, *self.render(payload, "checked" if dry_run else "applied"))
