"""`lora-gateway`: prepare the embedded default and run the gateway."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from rich.console import Console

from gateway.admin_cli import adapters_app, keys_app
from gateway.api.auth import describe_open_mode
from gateway.config import Settings
from gateway.rollouts_cli import rollouts_app
from gateway.routes_cli import routes_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
app.add_typer(adapters_app, name="adapters")
app.add_typer(keys_app, name="keys")
app.add_typer(routes_app, name="routes")
app.add_typer(rollouts_app, name="rollouts")


def _settings(host: str | None, port: int | None) -> Settings:
    settings = Settings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


@app.command()
def prepare() -> None:
    """Prepare the embedded base model checkpoint, train the demo adapters and prepare the
    `auto` classifier's model (once; cached)."""
    # Everything comes from local packages and files: never ask a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Only this command needs torch; the serving process never imports it.
    from adapters.demo import ensure_demo_adapters
    from gateway.engine.basemodel import convert_gguf, prepare_base_model

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if settings.engine.model_dir is None:
        model_dir = prepare_base_model(settings.cache_dir, settings.engine.checkpoint)
        console.print(f"base model ({settings.engine.checkpoint}): {model_dir}")
    bf16_dir = convert_gguf(settings.cache_dir)
    adapters = ensure_demo_adapters(bf16_dir, settings.resolved_adapter_root)
    for name, path in adapters.items():
        console.print(f"adapter {name}: {path}")
    from gateway.routing.embedder import packaged_files, prepare_model

    if settings.routing.model_path is None:
        files = packaged_files()
        classifier = prepare_model(files.onnx, settings.cache_dir / "classifier", files.sha256)
        console.print(f"classifier model: {classifier}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (GATEWAY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (GATEWAY_PORT).")] = None,
) -> None:
    """Run the gateway (and, unless GATEWAY_UPSTREAM_URLS is set, the vLLM engine)."""
    import uvicorn

    from gateway.app import create_app

    settings = _settings(host, port)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every health probe at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_dir = settings.resolved_model_dir
    if settings.managed_engine and not (model_dir / "config.json").is_file():
        console.print(f"[red]No model at {model_dir}.[/red] Run `lora-gateway prepare` first.")
        raise typer.Exit(2)
    console.print(_banner(settings), soft_wrap=True, highlight=False)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def _banner(settings: Settings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    if settings.managed_engine:
        engine = f"managed vLLM, log at {settings.state_dir / 'engine.log'}"
    else:
        engine = ", ".join(settings.upstream_urls)
    body = '{"model": "pirate", "messages": [{"role": "user", "content": "Tell me about snow."}]}'
    database = settings.database_url.split("@")[-1] if settings.database_url else "SQLite"
    keyed = settings.admin_key_sha256 is not None
    open_mode = describe_open_mode(keyed, bool(settings.tenant_keys))
    return (
        f"Gateway on {base} ({engine}; registry: {database}).\n"
        f"Once {base}/readyz answers 200 (about a minute), try:\n"
        f"  curl {base}/v1/models\n"
        f"  curl {base}/v1/chat/completions -H 'content-type: application/json' -d '{body}'\n"
        "  lora-gateway adapters list\n"
        + "".join(f"Note: {line}\n" for line in open_mode)
        + "Ctrl-C stops the gateway and the engine."
    )


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
