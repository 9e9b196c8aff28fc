"""Judge meta-evaluation: does the LLM judge tell a clearly worse answer from a good one?

Reads labelled pairs (`--data`, JSON lines of `question`, `good`, `bad` and `flaw`: one of
off_topic, truncated, wrong_language, broken_json) and asks a judge
(`gateway.quality.judge.Judge`, by `--rubric`) about each at an OpenAI-compatible `--url`:
1. pairwise, both orders (the good answer is the candidate in every other pair, the stable
   answer in the rest): agreement with the labels (the verdict names the good answer) over
   all pairs and over the decided ones (a verdict given), swap consistency (both orders read
   and agreeing), each order alone (a reply naming the good answer), unreadable replies,
   and which position the read replies picked (A, B, tie: position bias);
2. pointwise, each answer on its own: the share of pairs whose good answer scored above the
   bad one, ties, unreadable replies and the mean scores.
Per flaw and over all pairs, with the CPU model and the load average before and after
recorded beside the numbers. For scale: a judge answering A or B at random agrees with
itself across orders half the time and names the good answer in a quarter of all pairs;
a judge that always answers A never agrees with itself.

    .venv/bin/python -m loadtest.judge_eval --url http://127.0.0.1:8000/v1 --json judge.json

Requests carry the judge header, so a gateway that knows it does not count them as user
traffic. At most `--concurrency` requests are in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.config import Settings
from gateway.quality.judge import (
    MAX_TOKENS,
    Judge,
    PairwiseResult,
    PointwiseResult,
    load_rubric,
)
from loadtest.common import REPO_ROOT, load_average, machine, machine_line, write_json

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()
DEFAULT_DATA: Final = REPO_ROOT / "loadtest" / "data" / "judge_pairs.jsonl"
FLAWS: Final = ("off_topic", "truncated", "wrong_language", "broken_json")
BASE_MODEL: Final = str(Settings.model_fields["base_model_name"].default)


@dataclass(frozen=True, slots=True)
class Pair:
    """One labelled pair: `bad` is clearly worse than `good`, for the reason `flaw`."""

    question: str
    good: str
    bad: str
    flaw: str


@dataclass(frozen=True, slots=True)
class Graded:
    """What the judge said about one pair."""

    pair: Pair
    good_side: str  # "candidate" or "stable": where the good answer was put
    pairwise: PairwiseResult
    good_score: PointwiseResult
    bad_score: PointwiseResult


def load_pairs(path: Path) -> list[Pair]:
    """The labelled pairs of a JSON-lines file (blank lines skipped)."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            pair = Pair(**json.loads(line))
            if pair.flaw not in FLAWS:
                raise typer.BadParameter(f"{path}:{number}: unknown flaw {pair.flaw!r}")
            pairs.append(pair)
    return pairs


async def grade(judge: Judge, pairs: Sequence[Pair], concurrency: int) -> list[Graded]:
    """Ask the judge about every pair, pairwise (two requests) then pointwise (two more)."""
    # Each step sends two requests at once: half as many pairs as requests in flight.
    gate = asyncio.Semaphore(_pairs_in_flight(concurrency))

    async def one(index: int, pair: Pair) -> Graded:
        good_is_candidate = index % 2 == 0
        stable, candidate = (pair.bad, pair.good) if good_is_candidate else (pair.good, pair.bad)
        async with gate:
            verdict = await judge.pairwise(pair.question, stable, candidate)
        async with gate:
            good, bad = await asyncio.gather(
                judge.pointwise(pair.question, pair.good), judge.pointwise(pair.question, pair.bad)
            )
        side = "candidate" if good_is_candidate else "stable"
        return Graded(pair, side, verdict, good, bad)

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(pairs))))


def _pairs_in_flight(concurrency: int) -> int:
    return max(1, concurrency // 2)


def _share(count: int, total: int) -> float:
    return count / total if total else float("nan")


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _position(pick: str, candidate_is_a: bool) -> str:
    """Where a read reply's choice was shown: A, B, or tie."""
    return "tie" if pick == "tie" else "A" if (pick == "candidate") == candidate_is_a else "B"


def summarise(graded: Sequence[Graded]) -> dict[str, Any]:
    """The pairwise and pointwise numbers of a group of graded pairs."""
    n = len(graded)
    # (pair, order, whether that order showed the candidate as A)
    orders = [
        (g, order, candidate_is_a)
        for g in graded
        for order, candidate_is_a in (
            (g.pairwise.candidate_as_a, True),
            (g.pairwise.candidate_as_b, False),
        )
    ]
    positions = Counter(_position(o.pick, a) for _, o, a in orders if o.pick is not None)
    correct = sum(1 for g in graded if g.pairwise.verdict == g.good_side)
    decided = sum(1 for g in graded if g.pairwise.verdict is not None)
    ties = sum(1 for g in graded if g.pairwise.verdict == "tie")
    agreed = sum(1 for g in graded if g.pairwise.agreed)
    both_read = sum(1 for g in graded if g.pairwise.parsed == 2)
    scores = [s for g in graded for s in (g.good_score, g.bad_score)]
    scored = [
        (g.good_score.score, g.bad_score.score)
        for g in graded
        if g.good_score.score is not None and g.bad_score.score is not None
    ]
    return {
        "pairs": n,
        "pairwise": {
            "agreement_all": _share(correct, n),
            "agreement_decided": _share(correct, decided),
            "decided": decided,
            "decided_wrong": decided - correct - ties,
            "decided_tie": ties,
            "swap_consistency": _share(agreed, n),
            "swap_consistency_both_read": _share(agreed, both_read),
            "single_order_accuracy": _share(
                sum(1 for g, o, _ in orders if o.pick == g.good_side), 2 * n
            ),
            "unreadable_rate": _share(
                sum(1 for _, o, _ in orders if o.pick is None and not o.error), 2 * n
            ),
            "error_rate": _share(sum(1 for _, o, _ in orders if o.error), 2 * n),
            "position_picks": {k: positions[k] for k in ("A", "B", "tie")},
        },
        "pointwise": {
            "good_above_bad": _share(sum(1 for g, b in scored if g > b), n),
            "good_above_bad_both_read": _share(sum(1 for g, b in scored if g > b), len(scored)),
            "equal_both_read": _share(sum(1 for g, b in scored if g == b), len(scored)),
            "both_read": len(scored),
            "unreadable_rate": _share(
                sum(1 for s in scores if s.score is None and not s.error), 2 * n
            ),
            "error_rate": _share(sum(1 for s in scores if s.error), 2 * n),
            "mean_good": _mean(
                [g.good_score.score for g in graded if g.good_score.score is not None]
            ),
            "mean_bad": _mean([g.bad_score.score for g in graded if g.bad_score.score is not None]),
            "scores_seen": dict(
                sorted(Counter(s.score for s in scores if s.score is not None).items())
            ),
        },
    }


async def run(
    url: str,
    model: str,
    pairs: list[Pair],
    rubric: str,
    version: int,
    concurrency: int,
    timeout_s: float,
    max_tokens: int,
    api_key: str | None,
) -> tuple[list[Graded], float]:
    """Grade every pair; the wall time it took."""
    connections = 2 * _pairs_in_flight(concurrency)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits) as client:
        judge = Judge(
            client,
            load_rubric(rubric, version),
            base_url=url,
            model=model,
            api_key=api_key,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
        )
        started = time.perf_counter()
        graded = await grade(judge, pairs, concurrency)
        return graded, time.perf_counter() - started


@app.command()
def main(
    url: Annotated[str, typer.Option(help="The judge's OpenAI-compatible base URL (…/v1).")],
    model: Annotated[str, typer.Option(help="The judge model.")] = BASE_MODEL,
    data: Annotated[Path, typer.Option(help="Labelled pairs (JSON lines).")] = DEFAULT_DATA,
    rubric: Annotated[str, typer.Option(help="The rubric's name.")] = "helpfulness",
    rubric_version: Annotated[int, typer.Option(min=1)] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 4,
    timeout_s: Annotated[float, typer.Option(help="Per request.")] = 120.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="The judge's reply budget.")] = MAX_TOKENS,
    api_key: Annotated[str | None, typer.Option(help="Bearer key for the endpoint.")] = None,
    show: Annotated[int, typer.Option(help="Print the replies to this many pairs.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers here.")] = None,
) -> None:
    """Run the judge meta-evaluation."""
    pairs = load_pairs(data)
    console.print(f"{len(pairs)} pairs from {data}; judge {model} at {url}; {machine_line()}")
    load_before = load_average()
    graded, seconds = asyncio.run(
        run(url, model, pairs, rubric, rubric_version, concurrency, timeout_s, max_tokens, api_key)
    )
    results: dict[str, Any] = {
        "judge": {
            "url": url,
            "model": model,
            "rubric": rubric,
            "rubric_version": rubric_version,
            "max_tokens": max_tokens,
        },
        "data": {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()},
        **machine(),
        "load_before": round(load_before, 2),
        "load_after": round(load_average(), 2),
        "seconds": round(seconds, 1),
        "requests": 4 * len(pairs),
        "all": summarise(graded),
        "by_flaw": {f: summarise([g for g in graded if g.pair.flaw == f]) for f in FLAWS},
    }
    _print(results)
    for g in graded[:show]:
        console.print(
            f"[bold]{g.pair.flaw}[/] {g.pair.question!r} good={g.good_side}", highlight=False
        )
        pairwise = g.pairwise
        console.print(
            f"  pairwise {pairwise.verdict}: {pairwise.candidate_as_a.raw!r} | "
            f"{pairwise.candidate_as_b.raw!r}",
            highlight=False,
        )
        console.print(
            f"  scores good {g.good_score.raw!r} bad {g.bad_score.raw!r}", highlight=False
        )
    if json_out is not None:
        results["graded"] = [_record(g) for g in graded]
        write_json(json_out, results)


def _record(g: Graded) -> dict[str, Any]:
    return {
        **asdict(g.pair),
        "good_side": g.good_side,
        "pairwise": {**asdict(g.pairwise), "error": g.pairwise.error},
        "good_score": asdict(g.good_score),
        "bad_score": asdict(g.bad_score),
    }


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.0f}%"


def _print(results: dict[str, Any]) -> None:
    groups = {"all": results["all"], **results["by_flaw"]}
    # Short headers: agree = verdict names the good answer (of all pairs, of decided ones);
    # swap = both orders agree; 1 order = a single reply names the good answer.
    pairwise = Table(
        "pairwise", "n", "agree", "agree|dec", "dec", "swap", "1 order", "unread", "err", "A/B/tie"
    )
    for name, r in groups.items():
        p = r["pairwise"]
        picks = p["position_picks"]
        pairwise.add_row(
            name,
            str(r["pairs"]),
            _pct(p["agreement_all"]),
            _pct(p["agreement_decided"]),
            str(p["decided"]),
            _pct(p["swap_consistency"]),
            _pct(p["single_order_accuracy"]),
            _pct(p["unreadable_rate"]),
            _pct(p["error_rate"]),
            f"{picks['A']}/{picks['B']}/{picks['tie']}",
        )
    console.print(pairwise)
    pointwise = Table(
        "pointwise", "good>bad", "good>bad|read", "equal|read", "unread", "err", "good", "bad"
    )
    for name, r in groups.items():
        p = r["pointwise"]
        pointwise.add_row(
            name,
            _pct(p["good_above_bad"]),
            _pct(p["good_above_bad_both_read"]),
            _pct(p["equal_both_read"]),
            _pct(p["unreadable_rate"]),
            _pct(p["error_rate"]),
            f"{p['mean_good']:.1f}",
            f"{p['mean_bad']:.1f}",
        )
    console.print(pointwise)
    console.print(
        f"{results['requests']} requests in {results['seconds']} s; load "
        f"{results['load_before']} before, {results['load_after']} after; {results['cpu_model']}"
    )


if __name__ == "__main__":
    app()
