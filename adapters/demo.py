"""The three demo adapters (pirate, french, shout) and their shipped datasets.

Each adapter is trained once into `<adapter_root>/<name>/v1/`; a later call finds the
manifest's fingerprint (dataset + config + base model) unchanged and skips it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from adapters.train import Example, TrainConfig, fingerprint, read_manifest, train_lora

log = logging.getLogger(__name__)

DEMO_VERSION = 1

# Held out from every training set: the demo's outputs are judged on these.
EVAL_PROMPTS: tuple[str, ...] = (
    "Tell me about snow.",
    "What is the capital of France?",
    "Give me a tip for sleeping well.",
    "Describe a cat.",
    "Why do birds sing?",
    "How do I make a cup of tea?",
    "What is a good book to read?",
    "Explain what a volcano is.",
)


@dataclass(frozen=True)
class DemoAdapter:
    """A demo adapter: its route name, shipped dataset file and training config."""

    name: str
    dataset: str
    description: str
    config: TrainConfig = field(default_factory=TrainConfig)

    def examples(self) -> list[Example]:
        """The shipped training pairs."""
        return load_dataset(self.dataset)


DEMO_ADAPTERS: tuple[DemoAdapter, ...] = (
    DemoAdapter("pirate", "pirate.jsonl", "answers in a pirate voice", TrainConfig(steps=20)),
    DemoAdapter("french", "french.jsonl", "always answers in French", TrainConfig(steps=20)),
    DemoAdapter("shout", "shout.jsonl", "answers in capitals with exclamation marks", TrainConfig(steps=20)),
)


def parse_jsonl(text: str) -> list[Example]:
    """Parse `{"prompt", "response"}` lines; blank lines are skipped."""
    examples: list[Example] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt or not response:
            raise ValueError(f"line {number}: needs non-empty string 'prompt' and 'response'")
        examples.append(Example(prompt=prompt, response=response))
    return examples


def load_dataset(filename: str) -> list[Example]:
    """Load one of the JSONL files shipped in `adapters/demo/`."""
    text = resources.files("adapters").joinpath("demo", filename).read_text(encoding="utf-8")
    return parse_jsonl(text)


def adapter_dir(adapter_root: Path, name: str, version: int = DEMO_VERSION) -> Path:
    """Where a demo adapter version lives."""
    return adapter_root / name / f"v{version}"


def is_current(path: Path, expected_fingerprint: str) -> bool:
    """True when `path` holds a finished adapter trained from exactly this data and config."""
    manifest = read_manifest(path)
    if manifest is None or manifest.get("fingerprint") != expected_fingerprint:
        return False
    return (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


def ensure_demo_adapters(base_dir: Path, adapter_root: Path) -> dict[str, Path]:
    """Train each demo adapter that is missing or stale; return name -> adapter directory."""
    ready: dict[str, Path] = {}
    for demo in DEMO_ADAPTERS:
        examples = demo.examples()
        target = adapter_dir(adapter_root, demo.name)
        if is_current(target, fingerprint(examples, demo.config, base_dir)):
            log.info("demo adapter %s is current at %s", demo.name, target)
        else:
            train_lora(base_dir, examples, target, demo.config, name=demo.name, version=DEMO_VERSION)
        ready[demo.name] = target
    return ready
