"""`lora-gateway prepare` and `lora-gateway serve`: the embedded default and the gateway."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.api.auth import describe_open_mode
from gateway.cli.settings import load_settings
from gateway.config import Settings
from gateway.observability.logs import configure_logging

console = Console()


def _settings(host: str | None, port: int | None) -> Settings:
    settings = load_settings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def prepare(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print where everything is as one JSON object (progress: stderr)."
        ),
    ] = False,
) -> None:
    """Prepare the embedded base model checkpoint and the `auto` classifier's model (once;
    cached), and show where they and the adapters are."""
    # Everything comes from local packages and files: never ask a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if as_json:
        # Scripts read stdout as JSON: the progress lines and whatever the model tools print
        # go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            places = _prepare(settings)
        typer.echo(json.dumps({name: str(path) for name, path in places.items()}))
        return
    places = _prepare(settings)
    console.print(f"adapter root: {places['adapter_root']}", soft_wrap=True, highlight=False)
    train = [
        f"{shlex.quote(sys.executable)} -m adapters train-demo",
        f"--base-dir {shlex.quote(str(places['bf16_dir']))}",
        f"--adapter-root {shlex.quote(str(places['adapter_root']))}",
    ]
    console.print(f"demo adapters: {' '.join(train)}", soft_wrap=True, highlight=False)


def _prepare(settings: Settings) -> dict[str, Path]:
    """Prepare what is missing and print each model's place; return where the served model,
    its bf16 original, the classifier's model and the adapter root are."""
    # Only this command needs torch; the serving process never imports it.
    from gateway.engine.basemodel import convert_gguf, prepare_base_model
    from gateway.routing.embedder import packaged_files, prepare_model

    model_dir = settings.resolved_model_dir
    if settings.engine.model_dir is None:
        model_dir = prepare_base_model(settings.cache_dir, settings.prepared_checkpoint)
        console.print(f"base model ({settings.resolved_checkpoint}): {model_dir}", soft_wrap=True)
    # The demo adapters are trained on the embedded model's bf16 original.
    bf16_dir = convert_gguf(settings.cache_dir)
    console.print(f"bf16 base model (adapters train on it): {bf16_dir}", soft_wrap=True)
    classifier = settings.routing.model_path
    if classifier is None:
        files = packaged_files()
        classifier = prepare_model(files.onnx, settings.cache_dir / "classifier", files.sha256)
        console.print(f"classifier model: {classifier}", soft_wrap=True)
    # The demo routes' reward heads, trained over the classifier's embeddings (seconds).
    from gateway.quality.rewards import ensure_demo_heads
    from gateway.routing.embedder import load_embedder

    routing = settings.routing
    embedder = load_embedder(
        settings.cache_dir,
        model=routing.model_path,
        tokenizer=routing.tokenizer_path,
        max_tokens=routing.max_tokens,
    )
    heads = ensure_demo_heads(settings.resolved_reward_dir, embedder)
    console.print(f"demo reward heads: {settings.resolved_reward_dir}", soft_wrap=True)
    return {
        "model_dir": model_dir,
        "bf16_dir": bf16_dir,
        "classifier_model": classifier,
        "adapter_root": settings.resolved_adapter_root,
        "reward_dir": heads[0].parent if heads else settings.resolved_reward_dir,
    }


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (GATEWAY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (GATEWAY_PORT).")] = None,
) -> None:
    """Run the gateway (and, unless GATEWAY_UPSTREAM_URLS is set, the vLLM engine)."""
    settings = _settings(host, port)
    # Imported after the settings are read (a bad one is reported without loading the app)
    # and before logging is set up (what the app's dependencies log on import is noise here).
    import uvicorn

    from gateway.app import create_app

    configure_logging(settings.log_level, settings.log_format)
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
        engine = ", ".join(settings.upstream_urls) or f"replicas of {settings.upstream_dns}"
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
