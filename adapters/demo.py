"""The four demo adapters (pirate, french, shout, cowboy) and their shipped datasets.

Each adapter is trained once into `<adapter_root>/<name>/v1/`; a later call finds the
manifest's fingerprint (dataset + config + base model) unchanged and skips it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from adapters.train import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Example,
    TrainConfig,
    fingerprint,
    read_manifest,
    train_lora,
)

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
    "How does a bicycle work?",
    "What should I cook for dinner tonight?",
    "How do I clean my room quickly?",
    "What makes a good teacher?",
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


# English tokens barely move for the pirate and cowboy voices, so they learn in fewer steps;
# French and capitals put the answer in token sequences the small base model rarely produces.
DEMO_ADAPTERS: tuple[DemoAdapter, ...] = (
    DemoAdapter(
        "pirate",
        "pirate.jsonl",
        "answers in a pirate voice",
        TrainConfig(steps=20, learning_rate=3e-3),
    ),
    DemoAdapter(
        "french",
        "french.jsonl",
        "always answers in French",
        TrainConfig(steps=30, learning_rate=2e-3),
    ),
    DemoAdapter(
        "shout",
        "shout.jsonl",
        "answers in capitals, exclaiming",
        TrainConfig(steps=30, learning_rate=2e-3),
    ),
    DemoAdapter(
        "cowboy",
        "cowboy.jsonl",
        "answers like an Old-West cowboy",
        TrainConfig(steps=20, learning_rate=3e-3),
    ),
)


def parse_jsonl(text: str) -> list[Example]:
    """Parse `{"prompt", "response"}` lines; blank lines are skipped."""
    examples: list[Example] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt, response = row.get("prompt"), row.get("response")
        if not (isinstance(prompt, str) and isinstance(response, str) and prompt and response):
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
    return all((path / part).is_file() for part in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))


def stale_demo_adapters(base_dir: Path, adapter_root: Path) -> list[str]:
    """Names of demo adapters that are missing or were trained from other data or config."""
    return [
        demo.name
        for demo in DEMO_ADAPTERS
        if not is_current(
            adapter_dir(adapter_root, demo.name),
            fingerprint(demo.examples(), demo.config, base_dir),
        )
    ]


def ensure_demo_adapters(base_dir: Path, adapter_root: Path) -> dict[str, Path]:
    """Train each demo adapter that is missing or stale; return name -> adapter directory."""
    stale = set(stale_demo_adapters(base_dir, adapter_root))
    ready: dict[str, Path] = {}
    for demo in DEMO_ADAPTERS:
        target = adapter_dir(adapter_root, demo.name)
        if demo.name in stale:
            train_lora(base_dir, demo.examples(), target, demo.config, name=demo.name)
        else:
            log.info("demo adapter %s is current at %s", demo.name, target)
        ready[demo.name] = target
    return ready
