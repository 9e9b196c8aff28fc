"""What the command groups of whole documents (`scorers`, `slos`) share: `show` reads the
one in use, `apply` reads a file (or `demo`) and puts it; both print it the group's way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import RenderableType

from gateway.cli.client import DEFAULT_URL, AdminKey, AsJson, Json, Url, emit, fail, request

DryRun = Annotated[bool, typer.Option("--dry-run", help="Only check it.")]
ReasonText = Annotated[str, typer.Option(help="Why; kept in the audit log.")]
ShowSource = Annotated[bool, typer.Option("--source", help="Print the YAML.")]
DocumentFile = Annotated[
    str, typer.Argument(metavar="FILE", help="The document (YAML or JSON), or `demo`.")
]


@dataclass(frozen=True)
class DocumentApi:
    """One kind of document on the admin API: its path, how a file (or `demo`) is read, and
    how an answer is printed (given `in use:`, `checked` or `applied`)."""

    path: str
    read: Callable[[str], str]
    render: Callable[[Json, str], Sequence[RenderableType]]

    def commands(self, app: typer.Typer, what: str) -> None:
        """Add `show` and `apply` to a command group, for a document called `what`."""
        api = self

        def show(
            url: Url = DEFAULT_URL,
            admin_key: AdminKey = None,
            as_json: AsJson = False,
            source: ShowSource = False,
        ) -> None:
            api.show(url, admin_key, as_json=as_json, source=source)

        def apply(
            file: DocumentFile,
            url: Url = DEFAULT_URL,
            admin_key: AdminKey = None,
            as_json: AsJson = False,
            dry_run: DryRun = False,
            reason: ReasonText = "",
        ) -> None:
            api.apply(url, admin_key, file, as_json=as_json, dry_run=dry_run, reason=reason)

        show.__doc__ = f"Show the {what} in use."
        apply.__doc__ = f"Replace the {what} (checked whole first; a bad one changes nothing)."
        app.command("show")(show)
        app.command("apply")(apply)

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
