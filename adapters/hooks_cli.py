"""`python -m adapters hooks serve`: a webhook receiver that verifies the gateway's
signatures (Standard Webhooks) and closes the loop (`adapters.loop`).

It answers 2xx only once the event is handled, so the gateway retries a delivery that met a
failure here (a gateway that was briefly unreachable for the evidence, say); a bad
signature gets 401 and is never handled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from rich.console import Console
from standardwebhooks import Webhook, WebhookVerificationError

from adapters.client import DEFAULT_URL, GatewayClient, GatewayError
from adapters.loop import handle
from adapters.options import AdminKey, Url
from adapters.spec import LoadedSpec, SpecError, load_spec

hooks_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger(__name__)
console = Console()


def make_app(secret: str, specs: list[LoadedSpec], client: GatewayClient) -> FastAPI:
    """The receiver as an ASGI app (`POST /hooks`)."""
    verifier = Webhook(secret)
    app = FastAPI(title="adapters hook receiver", openapi_url=None)
    app.state.handled = []

    @app.post("/hooks")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            payload = verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            log.warning("refused a message with a bad signature: %s", exc)
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "not an event"}, status_code=400)
        try:
            outcome = await run_in_threadpool(handle, payload, specs, client)
        except GatewayError as exc:
            # Not handled: answer 503 so the gateway delivers it again later.
            log.warning("could not handle %s: %s", payload.get("type"), exc.message)
            return JSONResponse({"error": exc.message}, status_code=503)
        app.state.handled.append(outcome)
        console.print(
            f"{outcome.event} {outcome.route}@{outcome.version}: {outcome.action}"
            + (
                f"; {outcome.exported} counterexamples → {outcome.counterexamples}"
                if outcome.counterexamples
                else ""
            ),
            soft_wrap=True,
        )
        return JSONResponse({"action": outcome.action})

    return app


def _specs(paths: list[Path]) -> list[LoadedSpec]:
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob("*/*.yaml")) if path.is_dir() else [path])
    loaded = []
    for file in found:
        try:
            loaded.append(load_spec(file))
        except SpecError as exc:
            if file in paths:
                raise
            log.info("skipping %s: %s", file, exc)
    return loaded


@hooks_app.command()
def serve(
    specs: Annotated[
        list[Path],
        typer.Argument(metavar="SPEC...", help="Spec files, or directories of <task>/*.yaml."),
    ],
    secret: Annotated[
        str,
        typer.Option(envvar="ADAPTERS_HOOK_SECRET", help="The subscription's secret (whsec_...)."),
    ],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    host: str = "127.0.0.1",
    port: int = 8900,
) -> None:
    """Receive the gateway's rollout webhooks at http://HOST:PORT/hooks."""
    import uvicorn

    try:
        loaded = _specs(specs)
    except SpecError as exc:
        for problem in exc.problems:
            console.print(f"[red]error:[/red] {problem}", soft_wrap=True)
        raise typer.Exit(2) from exc
    console.print(
        f"receiving at http://{host}:{port}/hooks for "
        + ", ".join(s.spec.name for s in loaded)
        + f"; evidence from {url}",
        soft_wrap=True,
    )
    app = make_app(secret, loaded, GatewayClient(url, admin_key))
    uvicorn.run(app, host=host, port=port, log_level="warning")


def subscribe(client: GatewayClient, receiver_url: str) -> dict[str, Any]:
    """Subscribe `receiver_url` to promotions and rollbacks; the answer holds the secret."""
    body = {
        "url": receiver_url,
        "events": ["rollout.promoted", "rollout.rolled_back"],
        "description": "adapters pipeline: lineage and counterexamples",
    }
    created: dict[str, Any] = client.call("POST", "/admin/hooks", body=body).json()
    return created


@hooks_app.command("subscribe")
def subscribe_command(
    receiver_url: Annotated[str, typer.Argument(help="e.g. http://127.0.0.1:8900/hooks")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Subscribe a receiver to the gateway's promotions and rollbacks; print its secret."""
    with GatewayClient(url, admin_key) as client:
        created = subscribe(client, receiver_url)
    console.print(json.dumps({"id": created["id"], "secret": created["secret"]}))
