"""The whole loop on one machine: `python -m adapters.demo_loop` (or scripts/demo_loop.sh).

1. A gateway starts on the embedded engine (SmolLM2 on vLLM CPU), with rollout analysis on,
   and a hook receiver (`python -m adapters hooks serve`) subscribes to it.
2. `run` a first round of the json_extract example (its spec trained half as long, held to
   half its floors): this first version becomes stable.
3. `run` the example's spec itself, a better version: a rollout starts in shadow; traffic
   flows; the analysis takes it through the canary steps and promotes it; the receiver
   records the promotion in the run's lineage.
4. A broken version (the spec trained on the wrong dataset) fails its gates in `evaluate`;
   an operator registers it anyway (`register --ignore-gates`); the analysis rolls it back;
   the receiver marks the run rolled back with the verdict and exports the answers that sank
   it as counterexamples next to the spec.

Everything runs under `--workdir` (default `.state/demo-loop`): a copy of the examples, the
gateway's state and adapter root, logs. Trained runs are kept there, so a second demo skips
training.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console

from adapters.local_gateway import REPO, LocalGateway, free_port
from adapters.users import Users

EXAMPLES = REPO / "adapters" / "examples"
ROUTE_TERMINAL = {"promoted", "rolled_back", "aborted"}
console = Console()
app = typer.Typer(add_completion=False, help=__doc__)


class Traffic(Users):
    """Task prompts to the route from distinct users until stopped, `in_flight` at a time
    (the engine batches them; one at a time would leave the analysis waiting for samples)."""

    def __init__(
        self,
        url: str,
        route: str,
        prompts: list[list[dict[str, str]]],
        tag: str,
        in_flight: int = 4,
    ) -> None:
        super().__init__(in_flight)
        self.url, self.route, self.prompts, self.tag = url, route, prompts, tag
        self.served: dict[str, int] = {}
        self._client = httpx.Client(timeout=120)

    def run(self) -> None:
        with self._client:
            super().run()

    def ask(self, i: int) -> None:
        body = {
            "model": self.route,
            "messages": self.prompts[i % len(self.prompts)],
            "max_tokens": 96,
            "temperature": 0.0,
            "user": f"{self.tag}-{i}",
        }
        try:
            answer = self._client.post(f"{self.url}/v1/chat/completions", json=body)
        except httpx.HTTPError:
            time.sleep(0.5)
            return
        variant = answer.headers.get("x-variant", "stable")
        with self.lock:
            self.served[variant] = self.served.get(variant, 0) + 1


def _wait_rollout(url: str, route: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/admin/rollouts/{route}", timeout=30)
        if answer.status_code != 200:
            raise SystemExit(f"no rollout of {route}: {answer.text}")
        status: dict[str, Any] = answer.json()
        where = f"{status['stage']} step {status['step']} ({status['weight']}%)"
        if where != last:
            console.print(f"  rollout {status['id']}: {where}")
            last = where
        if status["stage"] in ROUTE_TERMINAL:
            return status
        time.sleep(1.0)
    raise SystemExit(f"the rollout of {route} did not end within {timeout_s:.0f} s")


def _variant_specs(task: Path) -> tuple[Path, Path, Path]:
    """A first round (the example's spec trained half as long, held to half its floors), the
    example's spec itself (a better second version) and a broken one (trained on another
    task's data)."""
    spec = task / "spec.yaml"
    data = yaml.safe_load(spec.read_text())
    training = data.get("training", {})
    gates = data.get("gates", {})
    floors = {key: value / 2 for key, value in gates.get("min", {}).items()}
    first = dict(
        data,
        training={**training, "steps": training["steps"] // 2},
        gates={**gates, "min": floors},
    )
    broken = dict(data, data={"train": ["../french/data/train.jsonl"]})
    for path, content in ((task / "first.yaml", first), (task / "broken.yaml", broken)):
        path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))
    return task / "first.yaml", spec, task / "broken.yaml"


@app.command()
def main(
    workdir: Annotated[Path, typer.Option(help="Where everything goes.")] = REPO
    / ".state"
    / "demo-loop",
    example: Annotated[str, typer.Option(help="The example task to use.")] = "json_extract",
) -> None:
    """Run the whole loop and print what happened at each step."""
    started = time.monotonic()

    def at() -> str:
        return f"{time.monotonic() - started:.0f} s"

    workdir.mkdir(parents=True, exist_ok=True)
    examples = workdir / "examples"
    runs_keep = {}
    # Keep trained runs across demos; everything else starts fresh.
    for runs in examples.glob("*/runs"):
        runs_keep[runs.parent.name] = runs.rename(workdir / f".runs-{runs.parent.name}")
    shutil.rmtree(examples, ignore_errors=True)
    shutil.copytree(
        EXAMPLES, examples, ignore=shutil.ignore_patterns("runs", "counterexamples", "__pycache__")
    )
    for name, kept in runs_keep.items():
        kept.rename(examples / name / "runs")
    for part in ("state", "adapters"):
        shutil.rmtree(workdir / part, ignore_errors=True)
    task = examples / example
    first, spec, broken = _variant_specs(task)
    route = str(yaml.safe_load(spec.read_text())["name"])

    hooks_port = free_port()
    settings = {
        "GATEWAY_ANALYSIS__INTERVAL_S": "1",
        "GATEWAY_QUALITY__FLUSH_S": "0.5",
        "GATEWAY_ROLLOUT__FLUSH_S": "0.5",
        "GATEWAY_QUALITY__KEEP_TEXT": "all",
    }
    console.rule("gateway")
    with LocalGateway(workdir, **settings) as gateway:
        url = gateway.url
        console.print(f"gateway ready at {url} (log: {workdir / 'gateway.log'})")
        hook = httpx.post(
            f"{url}/admin/hooks",
            json={
                "url": f"http://127.0.0.1:{hooks_port}/hooks",
                "events": ["rollout.promoted", "rollout.rolled_back"],
            },
            timeout=30,
        ).json()
        receiver = ["-m", "adapters", "hooks", "serve", str(spec), "--port", str(hooks_port)]
        gateway.spawn(receiver, "receiver.log", ADAPTERS_HOOK_SECRET=hook["secret"])
        console.print(f"hook receiver on port {hooks_port} (log: {workdir / 'receiver.log'})")

        console.rule(f"1. run {first.name}: a first round, trained half as long ({at()})")
        gateway.adapters("run", str(first))
        rows = [
            json.loads(line) for line in (task / "data" / "test.jsonl").read_text().splitlines()
        ]
        messages = [_messages(row) for row in rows]

        console.rule(f"2. run {spec.name}: the full round, rolled out by the analysis ({at()})")
        gateway.adapters("run", str(spec))
        good, served = _drive(url, route, messages, "good")
        console.print(f"  -> {good['stage']} at {at()}; requests by variant: {served}")

        console.rule(f"3. {broken.name}: trained on the wrong data ({at()})")
        code = gateway.adapters("evaluate", str(broken), check=False)
        console.print(
            f"  evaluate exited {code}: the gates refuse it; an operator pushes it anyway"
        )
        gateway.adapters("register", str(broken), "--ignore-gates")
        bad, served = _drive(url, route, messages, "bad")
        console.print(f"  -> {bad['stage']} at {at()}; requests by variant: {served}")
        found = _wait_counterexamples(task, route, bad["candidate_version"], 120)

        console.rule("the loop closed")
        gateway.adapters("lineage", str(spec))
        lines = found.read_text().splitlines()
        console.print(f"counterexamples: {found} ({len(lines)} rows)")
        if lines:
            console.print(lines[0][:400], soft_wrap=True, markup=False)
        console.print(
            f"good version: {good['stage']}; broken version: {bad['stage']}; {at()} in all"
        )
    if good["stage"] != "promoted" or bad["stage"] != "rolled_back":
        raise SystemExit(1)


def _drive(
    url: str, route: str, messages: list[list[dict[str, str]]], tag: str
) -> tuple[dict[str, Any], dict[str, int]]:
    """Send traffic until the route's rollout ends; (its status, requests by variant)."""
    traffic = Traffic(url, route, messages, tag)
    traffic.start()
    try:
        return _wait_rollout(url, route, 1800), traffic.served
    finally:
        traffic.stopped.set()
        traffic.join(timeout=180)


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        return [m for m in row["messages"] if m["role"] != "assistant"][: len(row["messages"]) - 1]
    system = [{"role": "system", "content": row["system"]}] if "system" in row else []
    return [*system, {"role": "user", "content": row["prompt"]}]


def _wait_counterexamples(task: Path, route: str, version: int, timeout_s: float) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted((task / "counterexamples").glob(f"{route}-v{version}-rollout*.jsonl"))
        if found:
            return found[-1]
        time.sleep(0.5)
    raise SystemExit("the hook receiver exported no counterexamples")


if __name__ == "__main__":
    app()
