"""`lora-gateway rollouts`: roll a new adapter version out behind its name's stable one.

A rollout starts in shadow (the candidate answers copies of the route's requests, nobody sees
them), then moves through canary steps (a sticky share of the route's users gets the
candidate) and ends promoted, rolled back or aborted. Every command talks to a running
gateway's admin API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
import yaml
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli.client import (
    DEFAULT_URL,
    AdminKey,
    AsJson,
    Json,
    Reason,
    Url,
    emit,
    fail,
    only_set,
    request,
    when,
)
from gateway.cli.verdicts import analysis_renderables, history_renderables
from gateway.rollout.plan import DEFAULT_STEPS

rollouts_app = typer.Typer(
    no_args_is_help=True,
    help="Roll an adapter version out: shadow, canary steps, then promote or roll back.",
)
Route = Annotated[str, typer.Argument(help="The route: the adapter's name.")]
Force = Annotated[
    bool, typer.Option("--force", help="Move on although the step's minimums are not met.")
]
STAGE_STYLES = {
    "shadow": "cyan",
    "canary": "yellow",
    "promoted": "green",
    "rolled_back": "red",
    "aborted": "dim",
}
VARIANTS = ("stable", "canary", "shadow")
DONE = {
    "pause": "paused",
    "resume": "resumed",
    "advance": "advanced",
    "promote": "promoted",
    "rollback": "rolled back",
    "abort": "aborted",
}


def _path(route: str, *rest: str) -> str:
    return "/".join([f"/admin/rollouts/{quote(route, safe='')}", *rest])


# -- the plan ------------------------------------------------------------------------------


def _read_plan(path: Path) -> Json:
    """A plan file, YAML or JSON (JSON is YAML)."""
    try:
        plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read plan {path}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        fail(f"plan {path} is not valid YAML or JSON: {exc}")
    if not isinstance(plan, dict):
        fail(f"plan {path} must be a mapping (shadow, canary), not {type(plan).__name__}")
    return plan


def _parse_steps(text: str) -> list[float]:
    """`1,5,25,50,100` as canary weights in percent."""
    weights = []
    for item in text.split(","):
        try:
            weight = float(item.strip())
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise typer.BadParameter(
                f"{text!r} is not a comma-separated list of percentages such as 1,5,25,50,100",
                param_hint="--steps",
            )
        weights.append(weight)
    return weights


def _plan_from_options(shadow: Json, steps: str | None, step_minimums: Json) -> Json | None:
    """The plan the options describe, with only what was set (the server fills the rest)."""
    plan: Json = {}
    if shadow:
        plan["shadow"] = shadow
    if steps is not None or step_minimums:
        weights = _parse_steps(steps) if steps is not None else list(DEFAULT_STEPS)
        plan["canary"] = [{"weight": w, **step_minimums} for w in weights]
    return plan or None


# -- rendering -----------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _position(r: Json) -> str:
    """Where the rollout is: shadow, or canary step i of n with its weight."""
    if r["step"] < 0:
        rate = 100 * r["plan"].get("shadow", {}).get("sample_rate", 1.0)
        return f"shadow ({rate:g}% of requests copied), then {r['steps']} canary steps"
    return f"{r['step'] + 1} of {r['steps']}"


def _summary(r: Json) -> Text:
    route = r["route"]
    stage = Text(r["stage"], style=STAGE_STYLES.get(r["stage"], ""))
    if r["paused"]:
        stage.append(" (paused)", style="bold")
    lines = Text()
    lines.append(
        f"rollout {r['id']} of {route}: {route}@{r['stable_version']} (stable) -> "
        f"{route}@{r['candidate_version']} (candidate)\n"
    )
    lines.append("stage:        ")
    lines.append_text(stage)
    lines.append(f"\nstep:         {_position(r)}\n")
    lines.append(f"weight:       {r['weight']:g}% of requests to the candidate\n")
    lines.append(f"time in step: {_duration(r['time_in_step_s'])}\n")
    if r["active"]:
        missing = "; ".join(r["missing"]) or "nothing (the step's minimums are met)"
        lines.append(f"missing:      {missing}")
        if not r["warm_here"]:
            lines.append(
                "\nnote:         the candidate is not warm on this gateway replica yet; "
                "it serves only the stable version here"
            )
    else:
        lines.append(f"ended:        {when(r['ended_at'])}")
    started = f"started {when(r['created_at'])} by {r['created_by']}"
    lines.append(f"\n{started}" + (f": {r['reason']}" if r["reason"] else ""))
    return lines


def _samples_table(r: Json) -> Table:
    table = Table("step", *VARIANTS, title="samples")
    for samples in r["samples"]:
        counts = samples["counts"]
        table.add_row(escape(samples["name"]), *(str(counts.get(v, 0)) for v in VARIANTS))
    table.add_row("total", *(str(r["totals"].get(v, 0)) for v in VARIANTS))
    return table


def _event_note(detail: Json) -> str:
    notes = []
    if "from" in detail and "to" in detail:
        before, after = detail["from"], detail["to"]
        if (before["stage"], before["step"]) != (after["stage"], after["step"]):
            notes.append(f"{_stage_at(before)} -> {_stage_at(after)}")
    if detail.get("forced_past"):
        notes.append("forced past: " + "; ".join(detail["forced_past"]))
    if detail.get("skipped_steps"):
        notes.append(f"skipped {detail['skipped_steps']} steps")
    return ", ".join(notes)


def _stage_at(where: Json) -> str:
    if where["stage"] == "canary":
        return f"canary {where['step'] + 1} ({where['weight']:g}%)"
    return str(where["stage"])


def _events_table(r: Json) -> Table:
    table = Table("at", "actor", "action", "reason", "change", title="decisions")
    for event in r["events"]:
        table.add_row(
            when(event["at"]),
            escape(event["actor"]),
            escape(event["action"].removeprefix("rollout:")),
            escape(event["reason"]),
            escape(_event_note(event["detail"])),
        )
    return table


SIGNAL_VARIANTS = ("stable", "canary", "shadow", "paired")


def _signal_cell(s: Json | None) -> str:
    """`mean ± sd (n)`, plus the pass rate where values pass or fail."""
    if s is None or not s["count"]:
        return "-"
    cell = f"{s['mean']:.3g}"
    if s["sd"] is not None:
        cell += f" ± {s['sd']:.2g}"
    cell += f" (n={s['count']})"
    judged = s["passes"] + s["fails"]
    if judged:
        cell += f", {100 * s['passes'] / judged:.0f}% pass"
    return cell


def _signals_table(r: Json) -> Table:
    """Each signal's variants side by side (`paired`: candidate minus stable, same requests)."""
    table = Table("signal", *SIGNAL_VARIANTS, title="quality signals")
    by_signal: dict[str, dict[str, Json]] = {}
    for s in r["signals"]:
        by_signal.setdefault(s["signal"], {})[s["variant"]] = s
    for signal, variants in by_signal.items():
        table.add_row(escape(signal), *(_signal_cell(variants.get(v)) for v in SIGNAL_VARIANTS))
    return table


def _status(r: Json) -> list[RenderableType]:
    out: list[RenderableType] = [_summary(r), _samples_table(r)]
    if r.get("signals"):
        out.append(_signals_table(r))
    if r["events"]:
        out.append(_events_table(r))
    return out


def _list_table(rollouts: list[Json]) -> Table:
    table = Table("id", "route", "stable", "candidate", "stage", "step", "weight", "started", "by")
    for r in rollouts:
        stage = Text(r["stage"], style=STAGE_STYLES.get(r["stage"], ""))
        if r["paused"]:
            stage.append(" (paused)")
        table.add_row(
            str(r["id"]),
            escape(r["route"]),
            str(r["stable_version"]),
            str(r["candidate_version"]),
            stage,
            "shadow" if r["step"] < 0 else f"{r['step'] + 1}/{r['steps']}",
            f"{r['weight']:g}%",
            when(r["created_at"]),
            escape(r["created_by"]),
        )
    return table


def _excerpt(body: str, width: int = 48) -> str:
    """The answer's text when the body is an OpenAI answer, else the body; one line."""
    text = body
    try:
        choice = json.loads(body)["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- commands ------------------------------------------------------------------------------


@rollouts_app.command()
def start(
    route: Route,
    version: Annotated[int, typer.Argument(min=1, help="The candidate version.")],
    plan: Annotated[
        Path | None, typer.Option("--plan", help="The whole plan, a YAML or JSON file.")
    ] = None,
    shadow_rate: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Share of requests copied in shadow (default 1)."),
    ] = None,
    shadow_min_samples: Annotated[
        int | None, typer.Option(min=0, help="Shadow answers needed before advancing.")
    ] = None,
    shadow_min_duration: Annotated[
        float | None, typer.Option(min=0.0, help="Seconds in shadow before advancing.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="Canary weights in percent (default 1,5,25,50,100)."),
    ] = None,
    step_min_samples: Annotated[
        int | None, typer.Option(min=0, help="Canary requests needed in each step.")
    ] = None,
    step_min_duration: Annotated[
        float | None, typer.Option(min=0.0, help="Seconds in each step before moving on.")
    ] = None,
    reason: Reason = None,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Start rolling VERSION out on ROUTE, in shadow (the candidate is warmed up first).

    The plan comes from --plan, or from the other options (unset ones keep the server's
    defaults)."""
    shadow = only_set(
        sample_rate=shadow_rate,
        min_samples=shadow_min_samples,
        min_duration_s=shadow_min_duration,
    )
    step_minimums = only_set(min_samples=step_min_samples, min_duration_s=step_min_duration)
    if plan is not None:
        given = {
            "--shadow-rate": shadow_rate,
            "--shadow-min-samples": shadow_min_samples,
            "--shadow-min-duration": shadow_min_duration,
            "--steps": steps,
            "--step-min-samples": step_min_samples,
            "--step-min-duration": step_min_duration,
        }
        mixed = [option for option, value in given.items() if value is not None]
        if mixed:
            raise typer.BadParameter(
                "cannot be combined with " + ", ".join(mixed), param_hint="--plan"
            )
        chosen: Json | None = _read_plan(plan)
    else:
        chosen = _plan_from_options(shadow, steps, step_minimums)
    body = only_set(route=route, version=version, plan=chosen, reason=reason)
    r = request(url, admin_key, "POST", "/admin/rollouts", body=body).json()
    emit(r, as_json, f"started rollout {r['id']} of {route}@{version}", *_status(r))


@rollouts_app.command()
def status(
    route: Route, url: Url = DEFAULT_URL, admin_key: AdminKey = None, as_json: AsJson = False
) -> None:
    """The route's active rollout (else its latest): stage, weight, samples, decisions, and
    the analysis's newest verdict, signal by signal."""
    r = request(url, admin_key, "GET", _path(route)).json()
    analysis = request(url, admin_key, "GET", _path(route, "analysis")).json()
    emit({**r, "analysis": analysis}, as_json, *_status(r), *analysis_renderables(analysis))


@rollouts_app.command()
def explain(
    ref: Annotated[str, typer.Argument(help="A rollout id, or a route (its latest rollout).")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many verdicts.")] = 50,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """The analysis's verdicts of a rollout, oldest first, each signal with its evidence."""
    found = request(url, admin_key, "GET", _path(ref, "verdicts"), params={"limit": limit})
    out = found.json()
    title = f"rollout {out['rollout']} of {out['route']}: {len(out['data'])} verdicts"
    emit(out, as_json, title, *history_renderables(out["data"]))


@rollouts_app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many rollouts.")] = 50,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """The newest rollouts, active or ended, newest first."""
    payload = request(url, admin_key, "GET", "/admin/rollouts", params={"limit": limit}).json()
    rollouts = payload["data"]
    emit(payload, as_json, _list_table(rollouts) if rollouts else "no rollouts")


def _command(
    action: str,
    route: str,
    reason: str | None,
    url: str,
    key: str | None,
    as_json: bool,
    *,
    force: bool = False,
) -> None:
    body = only_set(reason=reason, force=force or None)
    r = request(url, key, "POST", _path(route, action), body=body).json()
    emit(r, as_json, f"{DONE[action]} rollout {r['id']} of {route}", *_status(r))


def _add_command(action: str, doc: str, *, with_force: bool) -> None:
    """Register `rollouts <action> ROUTE` (with `--force` where a step's minimums apply)."""

    def plain(
        route: Route,
        reason: Reason = None,
        url: Url = DEFAULT_URL,
        admin_key: AdminKey = None,
        as_json: AsJson = False,
    ) -> None:
        _command(action, route, reason, url, admin_key, as_json)

    def forced(
        route: Route,
        force: Force = False,
        reason: Reason = None,
        url: Url = DEFAULT_URL,
        admin_key: AdminKey = None,
        as_json: AsJson = False,
    ) -> None:
        _command(action, route, reason, url, admin_key, as_json, force=force)

    chosen = forced if with_force else plain
    chosen.__doc__ = doc
    rollouts_app.command(action)(chosen)


for _action, _doc, _force in (
    (
        "pause",
        "Hold the rollout where it is: the canary keeps its users, shadow copies stop.",
        False,
    ),
    ("resume", "Resume a paused rollout.", False),
    ("advance", "Move to the next canary step (from shadow: the first one).", True),
    (
        "promote",
        "Make the candidate the stable version (from the last canary step, or --force).",
        True,
    ),
    (
        "rollback",
        "Send every request back to the stable version at once and end the rollout.",
        False,
    ),
    (
        "abort",
        "End the rollout without a verdict on the candidate (the stable version serves).",
        False,
    ),
):
    _add_command(_action, _doc, with_force=_force)


@rollouts_app.command()
def assign(
    route: Route,
    subjects: Annotated[list[str], typer.Argument(help="Requests' `user` values.")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Which variant each subject gets from the active rollout now."""
    body = {"subjects": subjects}
    payload = request(url, admin_key, "POST", _path(route, "assignments"), body=body).json()
    table = Table("subject", "variant")
    for subject, variant in zip(subjects, payload["variants"], strict=True):
        table.add_row(escape(subject), variant)
    line = f"rollout {payload['rollout']} ({payload['stage']}, {payload['weight']:g}% canary)"
    emit(payload, as_json, line, table)


@rollouts_app.command()
def pairs(
    route: Route,
    after: Annotated[int, typer.Option(min=0, help="Only pairs with a higher id.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many pairs.")] = 100,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
    as_json: AsJson = False,
) -> None:
    """Shadow pairs: the stable version's answer and the candidate's, oldest first."""
    params = {"after": after, "limit": limit}
    payload = request(url, admin_key, "GET", _path(route, "shadow-pairs"), params=params).json()
    found = payload["data"]
    if not found:
        emit(payload, as_json, "no shadow pairs")
        return
    table = Table("id", "request", "endpoint", "stable", "answer", "candidate", "answer")
    for p in found:
        table.add_row(
            str(p["id"]),
            escape(p["request_id"]),
            escape(p["endpoint"]),
            f"v{p['primary_version']} {p['primary_status']} {p['primary_ms']:.0f} ms",
            escape(_excerpt(p["primary_body"])),
            f"v{p['shadow_version']} {p['shadow_status']} {p['shadow_ms']:.0f} ms",
            escape(_excerpt(p["shadow_body"])),
        )
    more = f"more: --after {found[-1]['id']}" if len(found) == limit else ""
    emit(payload, as_json, table, *([more] if more else []))
