"""Shared fixtures of the integration suite: the prepared embedded model, the demo
adapters, a gateway process that manages a real vLLM engine, and one real engine that
several modules share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Models come from local packages and files only: never ask a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gateway.config import DEFAULT_CACHE_DIR
from gateway.engine.cpu import served_checkpoint, served_dtype, stored_checkpoint
from gateway.testing.processes import wait_until_ok
from gateway.testing.server import free_port
from gateway.upstream.launcher import EngineProcess, EngineSpec
from gateway.upstream.supervisor import read_pid_file

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("GATEWAY_CACHE_DIR", str(DEFAULT_CACHE_DIR)))
# The checkpoint the gateway's own default serves on this CPU (int8 W8A8 with VNNI or AMX,
# float32 elsewhere), unless one is asked for.
CHECKPOINT = os.environ.get("GATEWAY_ENGINE__CHECKPOINT", "auto")
SERVED = served_checkpoint(CHECKPOINT)
BASE_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EngineAssets:
    """The model directories and adapters the real engine serves."""

    model_dir: Path
    bf16_dir: Path
    adapter_root: Path
    adapters: dict[str, Path]
    # vLLM's `--dtype` for `model_dir` (float32 for the float32 checkpoint; None: its own).
    dtype: str | None = None


@pytest.fixture(scope="session")
def engine_assets() -> EngineAssets:
    """Prepare (once, cached) the quantized base model and train the demo adapters."""
    from adapters.demo import ensure_demo_adapters
    from gateway.engine.basemodel import convert_gguf, prepare_base_model

    bf16 = convert_gguf(CACHE_DIR)
    model_dir = prepare_base_model(CACHE_DIR, stored_checkpoint(SERVED))
    adapter_root = CACHE_DIR / "adapters"
    adapters = ensure_demo_adapters(bf16, adapter_root)
    # The demo routes' reward heads, where the gateways started here look for them.
    from gateway.quality.rewards import ensure_demo_heads
    from gateway.routing.embedder import load_embedder

    ensure_demo_heads(CACHE_DIR / "reward", load_embedder(CACHE_DIR))
    return EngineAssets(model_dir, bf16, adapter_root, adapters, served_dtype(SERVED))


@pytest.fixture(scope="session")
def style_of() -> Callable[[str], str]:
    """The demo style classifier: "pirate", "french", "shout", "cowboy" or "base"."""
    from adapters.styles import classify_style

    return classify_style


@dataclass
class GatewayProcess:
    """A `lora-gateway serve` process managing its own vLLM engine."""

    url: str
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log_file: Path

    def engine_pid(self) -> int:
        """The managed engine's process (group) id, from the supervisor's pid file."""
        record = read_pid_file(self.state_dir / "engine.pid")
        assert record is not None, "no engine pid file"
        return record[0]

    def wait_ready(self, timeout_s: float) -> None:
        """Block until /readyz answers 200."""
        try:
            wait_until_ok(f"{self.url}/readyz", self.proc, timeout_s, "gateway", interval_s=0.5)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}; see {self.log_file}") from None

    def stop(self) -> None:
        """Ctrl-C the gateway (it stops its engine), then make sure both are gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_gateway(tmp: Path, assets: EngineAssets, **env: str) -> GatewayProcess:
    """Start `lora-gateway serve` on free ports with the given extra environment."""
    port = free_port()
    state_dir = tmp / "state"
    log_file = tmp / "gateway.log"
    environment = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_STATE_DIR": str(state_dir),
        "GATEWAY_CACHE_DIR": str(CACHE_DIR),
        "GATEWAY_ADAPTER_ROOT": str(assets.adapter_root),
        "GATEWAY_BASE_MODEL_NAME": BASE_NAME,
        "GATEWAY_ENGINE__MODEL_DIR": str(assets.model_dir),
        **({"GATEWAY_ENGINE__DTYPE": assets.dtype} if assets.dtype else {}),
        "GATEWAY_ENGINE__PORT": str(free_port()),
        "GATEWAY_HEALTH_INTERVAL_S": "0.5",
        **env,
    }
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return GatewayProcess(f"http://127.0.0.1:{port}", state_dir, proc, log_file)


@pytest.fixture(scope="module")
def gateway(
    engine_assets: EngineAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose engine has every LoRA slot filled by the demo adapters, routing
    `model: "auto"` with the demo route table."""
    tmp = tmp_path_factory.mktemp("gateway")
    process = start_gateway(
        tmp,
        engine_assets,
        GATEWAY_ENGINE__MAX_LORAS=str(len(engine_assets.adapters)),
        GATEWAY_ROUTING__TABLE="demo",
    )
    try:
        process.wait_ready(timeout_s=600)
        yield process
    finally:
        process.stop()


# --- one engine shared by modules -------------------------------------------------------------

# The engine plugin's defaults (grouped LoRA ops, compiled), the embedded checkpoint, three
# LoRA slots and the four demo adapters registered at start-up. A mixed batch of three of
# them fills every slot (what the isolation tests need: with a free last slot vLLM's bug
# stays invisible); four adapters taking turns in three slots swap on every request (what
# the slot-swap test needs). Neither needs a fresh engine: the slots' contents before a test
# do not change what it proves.
SHARED_ADAPTERS = ("pirate", "french", "shout", "cowboy")
SHARED_SLOTS = 3


def served_name(adapter: str) -> str:
    """The vLLM model name of a demo adapter's version 1 on an engine started here."""
    return f"{adapter}--v1"


@dataclass(frozen=True)
class SharedEngine:
    """A running engine several modules use, and where its log is."""

    url: str
    log_file: Path
    slots: int
    adapters: tuple[str, ...]

    def log(self) -> str:
        """Everything the engine has logged so far."""
        return self.log_file.read_text(errors="replace")


@pytest.fixture(scope="session")
def shared_engine(
    engine_assets: EngineAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedEngine]:
    """The shared engine, started on first use and stopped at the end of the session."""
    log_file = tmp_path_factory.mktemp("shared-engine") / "vllm.log"
    spec = EngineSpec(
        model_dir=engine_assets.model_dir,
        dtype=engine_assets.dtype,
        served_name="base",
        port=free_port(),
        max_loras=SHARED_SLOTS,
        lora_modules={served_name(a): engine_assets.adapters[a] for a in SHARED_ADAPTERS},
        omp_threads_bind="0-1",
        log_file=log_file,
        # A first start compiles the model: minutes on a small CPU without a warm cache.
        start_timeout_s=900.0,
    )
    engine = EngineProcess(spec)
    engine.start()
    try:
        yield SharedEngine(engine.url, log_file, SHARED_SLOTS, SHARED_ADAPTERS)
    finally:
        engine.stop()


def give_back_demo_adapters(engine: SharedEngine, assets: EngineAssets) -> None:
    """Leave the shared engine as the other modules expect it: a gateway owns the engines it
    serves, so one started on it unloads the demo adapters it does not serve, and loads its
    own."""
    models = httpx.get(f"{engine.url}/v1/models", timeout=30).json()["data"]
    held = {m["id"] for m in models} - {"base"}  # the shared engine's base model name
    wanted = {served_name(a): assets.adapters[a] for a in engine.adapters}
    for name in held - set(wanted):
        httpx.post(f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    for name, path in wanted.items():
        if name not in held:
            body = {"lora_name": name, "lora_path": str(path)}
            loaded = httpx.post(f"{engine.url}/v1/load_lora_adapter", json=body, timeout=120)
            loaded.raise_for_status()
