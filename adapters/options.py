"""The command line options the pipeline's commands share (typer annotations)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SpecArg = Annotated[Path, typer.Argument(metavar="SPEC", help="The spec file (YAML).")]
Url = Annotated[str, typer.Option("--url", envvar="LORA_GATEWAY_URL", help="Gateway base URL.")]
AdminKey = Annotated[
    str | None, typer.Option("--admin-key", envvar="LORA_GATEWAY_ADMIN_KEY", help="Admin key.")
]
AdapterRoot = Annotated[
    Path | None,
    typer.Option(
        "--adapter-root",
        envvar="GATEWAY_ADAPTER_ROOT",
        help="The gateway's adapter root (or a shared directory it reads).",
    ),
]
BaseDir = Annotated[
    Path | None,
    typer.Option("--base-dir", help="Local copy of the base model (default: the prepared one)."),
]
