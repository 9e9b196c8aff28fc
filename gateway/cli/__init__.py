"""`lora-gateway`: prepare the embedded default and run the gateway."""

from __future__ import annotations

import typer

from gateway.cli import serve
from gateway.cli.adapters import adapters_app
from gateway.cli.hooks import hooks_app
from gateway.cli.keys import keys_app
from gateway.cli.reward import reward_app
from gateway.cli.rollouts import rollouts_app
from gateway.cli.routes import routes_app
from gateway.cli.scorers import scorers_app
from gateway.cli.slos import slos_app
from gateway.cli.usage import usage

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.command()(serve.prepare)
app.command()(serve.serve)
app.command()(usage)
app.add_typer(adapters_app, name="adapters")
app.add_typer(keys_app, name="keys")
app.add_typer(routes_app, name="routes")
app.add_typer(rollouts_app, name="rollouts")
app.add_typer(scorers_app, name="scorers")
app.add_typer(slos_app, name="slos")
app.add_typer(hooks_app, name="hooks")
app.add_typer(reward_app, name="reward")


def main() -> None:
    """Console entry point."""
    app()
