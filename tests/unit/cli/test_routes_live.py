"""`lora-gateway routes apply` and `routes classify` against the real admin API (a gateway on
a loopback socket, the fake engine behind it, the real embedder)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app as cli

TABLE = """\
method: head
threshold: 0.5
rule_floor: 0.2
head: {background: none}
context: {turns: 2}
routes:
  - name: sea
    adapter: pirate
    keywords: [ahoy]
    negatives: ['\\bahoy, landlubber\\b']
    utterances:
      - Tell me about sailing ships on the open ocean
      - How do sailors navigate at sea?
      - How do I tie a bowline knot on a sailboat?
      - Explain how tides and waves affect a boat
default:
  utterances:
    - How do I sort a list in Python?
    - What is the derivative of x squared?
    - How do I fix a leaking faucet?
    - Recommend a thriller novel
"""


def routes(url: str, *args: str, group: str = "routes") -> str:
    result = CliRunner().invoke(cli, [group, *args, "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_apply_then_classify_explains_the_decision(gateway_url: str, tmp_path: Path) -> None:
    routes(gateway_url, "register", "pirate", "pirate/v1", group="adapters")
    table = tmp_path / "routes.yaml"
    table.write_text(TABLE, encoding="utf-8")
    assert "applied route table" in routes(gateway_url, "apply", str(table))

    out = routes(gateway_url, "classify", "How do sailors cross an ocean?")
    assert out.startswith("sea (pirate): embedding, nearest: sea scores ")
    assert "top routes" in out and "default" in out

    ruled = json.loads(routes(gateway_url, "classify", "ahoy, how do I sail?", "--json"))
    assert ruled["method"] == "rule" and ruled["rule"]["matched"] == "ahoy"
    negated = json.loads(routes(gateway_url, "classify", "Ahoy, landlubber! Hi.", "--json"))
    assert negated["rule"]["vetoed"] == "negative '\\bahoy, landlubber\\b' matched"
    assert negated["route"] == "default"

    follow_up = "and how long would that take?"
    alone = json.loads(routes(gateway_url, "classify", follow_up, "--json"))
    assert alone["route"] == "default"
    earlier = "I want to sail a small boat across the Atlantic next year."
    chat = json.loads(routes(gateway_url, "classify", follow_up, "--earlier", earlier, "--json"))
    assert chat["route"] == "sea" and chat["reason"] == "context"
    assert chat["earlier"] == [earlier]
