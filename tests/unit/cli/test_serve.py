"""`lora-gateway prepare` and `lora-gateway serve`: what prepare makes and reports, and
settings the gateway refuses at start-up."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import gateway
from gateway.cli import app
from gateway.engine import basemodel, cpu
from gateway.quality import rewards
from gateway.routing import embedder

ADMIN_SHA = "a" * 64
TENANT_SHA = "b" * 64


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GATEWAY_ setting of the caller leaks in; the cache is the test's own."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path / "state"))


@dataclass
class Preparation:
    """The model preparation steps, faked: what they were asked to make."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def base_model(self, cache_dir: Path, quantization: str = "w8a8") -> Path:
        self.calls.append(("base_model", quantization))
        # Model tools print progress; `prepare --json` must keep stdout for its JSON.
        print("quantizing...")
        return basemodel.model_dir(cache_dir, quantization)

    def bf16(self, cache_dir: Path) -> Path:
        self.calls.append(("bf16", cache_dir))
        return basemodel.model_dir(cache_dir, "bf16")

    def classifier(self, source: Path, cache_dir: Path, expected: str | None = None) -> Path:
        self.calls.append(("classifier", source))
        return cache_dir / "minilm.onnx"

    def embedder(self, cache_dir: Path, **options: Any) -> str:
        self.calls.append(("embedder", options.get("model")))
        return "an embedder"

    def reward_heads(self, reward_dir: Path, model: Any) -> list[Path]:
        self.calls.append(("reward_heads", reward_dir))
        return [reward_dir / "pirate"]


# A CPU with int8 dot products, where `auto` serves the int8 W8A8 checkpoint.
VNNI_CPU = frozenset({"avx2", "avx512f", "avx512_vnni"})


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> Preparation:
    fake = Preparation()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: VNNI_CPU)
    # `prepare` imports these when it runs, so the module attributes are what it calls.
    monkeypatch.setattr(basemodel, "prepare_base_model", fake.base_model)
    monkeypatch.setattr(basemodel, "convert_gguf", fake.bf16)
    monkeypatch.setattr(
        embedder,
        "packaged_files",
        lambda: embedder.ModelFiles(Path("/pkg/model.onnx"), Path("/pkg/tokenizer.json")),
    )
    monkeypatch.setattr(embedder, "prepare_model", fake.classifier)
    monkeypatch.setattr(embedder, "load_embedder", fake.embedder)
    monkeypatch.setattr(rewards, "ensure_demo_heads", fake.reward_heads)
    return fake


def invoke(*args: str, **env: str) -> Result:
    return CliRunner(env={"COLUMNS": "200", **env}).invoke(app, list(args))


# -- prepare -------------------------------------------------------------------------------


def test_prepare_json_reports_the_same_places_as_the_settings(
    prepared: Preparation, tmp_path: Path
) -> None:
    result = invoke("prepare", "--json")
    assert result.exit_code == 0, result.output
    cache = tmp_path / "cache"
    assert json.loads(result.stdout) == {
        "model_dir": str(cache / "models" / "smollm2-135m-instruct-w8a8"),
        "bf16_dir": str(cache / "models" / "smollm2-135m-instruct-bf16"),
        "classifier_model": str(cache / "classifier" / "minilm.onnx"),
        "adapter_root": str(cache / "adapters"),
        "reward_dir": str(cache / "reward"),
    }
    assert prepared.calls == [
        ("base_model", "w8a8"),
        ("bf16", cache),
        ("classifier", Path("/pkg/model.onnx")),
        # The demo routes' reward heads, over the classifier's embeddings.
        ("embedder", None),
        ("reward_heads", cache / "reward"),
    ]
    # What a person would read goes to stderr, where it does not spoil the JSON.
    assert "quantizing..." in result.stderr
    assert f"base model (w8a8): {cache / 'models' / 'smollm2-135m-instruct-w8a8'}" in result.stderr


def test_prepare_serves_float32_where_the_cpu_has_no_int8_dot_products(
    prepared: Preparation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    result = invoke("prepare", "--json")
    assert result.exit_code == 0, result.output
    bf16_dir = tmp_path / "cache" / "models" / "smollm2-135m-instruct-bf16"
    assert json.loads(result.stdout)["model_dir"] == str(bf16_dir)
    assert prepared.calls[0] == ("base_model", "bf16")
    assert f"base model (float32): {bf16_dir}" in result.stderr


def test_prepare_follows_the_checkpoint_and_adapter_root_settings(
    prepared: Preparation, tmp_path: Path
) -> None:
    result = invoke(
        "prepare",
        "--json",
        GATEWAY_ENGINE__CHECKPOINT="w4a16",
        GATEWAY_ADAPTER_ROOT=str(tmp_path / "mine"),
    )
    assert result.exit_code == 0, result.output
    places = json.loads(result.stdout)
    assert places["model_dir"].endswith("smollm2-135m-instruct-w4a16")
    assert places["adapter_root"] == str(tmp_path / "mine")
    assert ("base_model", "w4a16") in prepared.calls


def test_prepare_leaves_models_of_your_own_alone(prepared: Preparation, tmp_path: Path) -> None:
    own_model, own_classifier = tmp_path / "my-model", tmp_path / "my.onnx"
    result = invoke(
        "prepare",
        "--json",
        GATEWAY_ENGINE__MODEL_DIR=str(own_model),
        GATEWAY_ROUTING__MODEL_PATH=str(own_classifier),
    )
    assert result.exit_code == 0, result.output
    places = json.loads(result.stdout)
    assert places["model_dir"] == str(own_model)
    assert places["classifier_model"] == str(own_classifier)
    # The demo adapters still train on the embedded model's bf16 original.
    assert [name for name, _ in prepared.calls] == ["bf16", "embedder", "reward_heads"]
    assert prepared.calls[1] == ("embedder", own_classifier)


def test_prepare_says_where_things_are_and_how_to_train_the_demo_adapters(
    prepared: Preparation, tmp_path: Path
) -> None:
    result = invoke("prepare")
    assert result.exit_code == 0, result.output
    cache = tmp_path / "cache"
    lines = result.stdout.splitlines()
    assert f"base model (w8a8): {cache / 'models' / 'smollm2-135m-instruct-w8a8'}" in lines
    assert f"classifier model: {cache / 'classifier' / 'minilm.onnx'}" in lines
    assert f"adapter root: {cache / 'adapters'}" in lines
    bf16 = cache / "models" / "smollm2-135m-instruct-bf16"
    assert any(line.endswith(f"base model (adapters train on it): {bf16}") for line in lines)
    train = f"-m adapters train-demo --base-dir {bf16} --adapter-root {cache / 'adapters'}"
    assert any(line.startswith("demo adapters: ") and train in line for line in lines)


PREPARE_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from gateway.engine import basemodel
from gateway.routing import embedder

basemodel.prepare_base_model = lambda cache, quantization: cache / quantization
basemodel.convert_gguf = lambda cache: cache / "bf16"
embedder.packaged_files = lambda: embedder.ModelFiles(Path("m.onnx"), Path("t.json"))
embedder.prepare_model = lambda source, cache, sha=None: cache / "m.onnx"
embedder.load_embedder = lambda cache, **options: None
from gateway.quality import reward, rewards

# The demo heads' data is located (never imported) from the pipeline's package.
rewards.ensure_demo_heads = lambda directory, model: [reward.demo_data_dir()]
from gateway.cli import app

for args in (["--help"], ["prepare", "--help"], ["prepare", "--json"]):
    try:
        app(args)
    except SystemExit as exit:
        assert exit.code in (0, None), (args, exit.code)
pipeline = [m for m in sys.modules if m == "adapters" or m.startswith("adapters.")]
print(json.dumps(pipeline))
"""


def test_prepare_never_imports_the_adapter_pipeline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    env["GATEWAY_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PREPARE_IN_A_FRESH_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_no_gateway_module_imports_the_adapter_pipeline() -> None:
    package = Path(gateway.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "adapters" or n.startswith("adapters.") for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []


# -- settings refused at start-up ------------------------------------------------------------


def assert_refused(result: Result, *lines: str) -> None:
    """Exit 2 with one `error: ...` line per problem on stderr, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == list(lines)
    assert "Traceback" not in result.output


def test_serve_refuses_a_port_that_is_not_a_number() -> None:
    result = invoke("serve", GATEWAY_PORT="abc")
    assert_refused(
        result,
        "error: GATEWAY_PORT: Input should be a valid integer, unable to parse string as an "
        "integer",
    )


def test_serve_refuses_tenant_keys_that_are_not_json() -> None:
    result = invoke("serve", GATEWAY_TENANT_KEYS='[{"name": "team-a",')
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: GATEWAY_TENANT_KEYS: not valid JSON (")
    assert "Traceback" not in result.output


def test_serve_refuses_an_admin_key_that_is_also_a_tenant_key() -> None:
    tenants = [{"name": "team-a", "key_sha256": ADMIN_SHA}]
    result = invoke(
        "serve", GATEWAY_ADMIN_KEY_SHA256=ADMIN_SHA, GATEWAY_TENANT_KEYS=json.dumps(tenants)
    )
    assert_refused(
        result,
        "error: GATEWAY_TENANT_KEYS: tenant key 'team-a' has the admin key's sha256 "
        "(GATEWAY_ADMIN_KEY_SHA256); the admin key and every tenant key must differ",
    )


def test_serve_names_a_nested_setting_by_its_variable() -> None:
    result = invoke("serve", GATEWAY_ENGINE__MAX_LORAS="0")
    assert_refused(
        result, "error: GATEWAY_ENGINE__MAX_LORAS: Input should be greater than or equal to 1"
    )


def test_serve_names_a_bad_tenant_key_by_its_place_in_the_list() -> None:
    tenants = [
        {"name": "team-a", "key_sha256": TENANT_SHA},
        {"name": "team b", "key_sha256": "xyz"},
    ]
    result = invoke("serve", GATEWAY_TENANT_KEYS=json.dumps(tenants))
    assert_refused(
        result,
        "error: GATEWAY_TENANT_KEYS: [1].name: String should match pattern '^[A-Za-z0-9._-]+$'",
        "error: GATEWAY_TENANT_KEYS: [1].key_sha256: must be the 64 hex digits of a key's "
        "sha256 (`lora-gateway keys new`)",
    )


def test_serve_without_a_prepared_model_exits_2() -> None:
    result = invoke("serve")
    assert result.exit_code == 2
    assert "No model at" in result.stdout
    assert "Run `lora-gateway prepare` first." in result.stdout


def test_prepare_refuses_bad_settings_before_preparing_anything(prepared: Preparation) -> None:
    result = invoke("prepare", "--json", GATEWAY_ENGINE__CHECKPOINT="fp4")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: GATEWAY_ENGINE__CHECKPOINT: Input should be ")
    assert result.stdout == ""
    assert prepared.calls == []


def test_a_real_process_prints_the_error_line_and_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    tenants = [{"name": "team-a", "key_sha256": ADMIN_SHA}]
    env |= {
        "GATEWAY_ADMIN_KEY_SHA256": ADMIN_SHA,
        "GATEWAY_TENANT_KEYS": json.dumps(tenants),
        "GATEWAY_STATE_DIR": str(tmp_path),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: GATEWAY_TENANT_KEYS: tenant key 'team-a' ")
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""


# -- scripts/run.sh --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]
# Stand-ins for the venv's commands: each logs its arguments as a JSON line; `python -c`
# (how run.sh reads prepare's JSON) runs the real interpreter.
FAKE_LORA_GATEWAY = """#!/usr/bin/env bash
"$REAL_PYTHON" -c 'import json, os, sys; print(json.dumps(sys.argv[1:] + [os.environ.get("GATEWAY_ROUTING__TABLE")]))' lora-gateway "$@" >> "$RUN_LOG"
if [[ "$1" == prepare ]]; then
  echo "INFO converting..." >&2
  cat "$PREPARED"
fi
"""
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == -c ]]; then exec "$REAL_PYTHON" "$@"; fi
"$REAL_PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' python "$@" >> "$RUN_LOG"
"""


def test_run_sh_trains_the_demo_adapters_where_prepare_says_then_serves(
    prepared: Preparation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache path with a space proves the paths survive the shell whole.
    cache = tmp_path / "my cache"
    monkeypatch.setenv("GATEWAY_CACHE_DIR", str(cache))
    report = invoke("prepare", "--json")
    assert report.exit_code == 0, report.output

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    stubs = {
        "scripts/run.sh": (REPO / "scripts" / "run.sh").read_text(),
        "scripts/setup.sh": "#!/usr/bin/env bash\n",
        ".venv/bin/lora-gateway": FAKE_LORA_GATEWAY,
        ".venv/bin/python": FAKE_PYTHON,
    }
    for relative, text in stubs.items():
        (repo / relative).write_text(text)
        (repo / relative).chmod(0o755)
    (tmp_path / "prepared.json").write_text(report.stdout)
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    env |= {
        "REAL_PYTHON": sys.executable,
        "RUN_LOG": str(log),
        "PREPARED": str(tmp_path / "prepared.json"),
    }

    done = subprocess.run(
        ["bash", str(repo / "scripts" / "run.sh"), "--port", "9000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    bf16, adapters = cache / "models" / "smollm2-135m-instruct-bf16", cache / "adapters"
    assert calls == [
        ["lora-gateway", "prepare", "--json", "demo"],
        [
            "python",
            "-m",
            "adapters",
            "train-demo",
            "--base-dir",
            str(bf16),
            "--adapter-root",
            str(adapters),
        ],
        ["lora-gateway", "serve", "--port", "9000", "demo"],
    ]
