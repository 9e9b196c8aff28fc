"""Cross-fitting: a table that learns from its tuning prompts is scored out of fold."""

from __future__ import annotations

import asyncio

import pytest

from gateway.routing.calibrate import Sample, folds_of, gather, learned, out_of_fold
from gateway.routing.classifier import RouteIndex
from gateway.routing.table import RouteTable

from .test_classifier import HashingEmbedder, make_table, route


def test_out_of_fold_scores_each_prompt_without_its_fold() -> None:
    embedder = HashingEmbedder()
    tuning = [
        Sample("hoist the mainsail at dawn", "sea"),
        Sample("splice the mainbrace tonight", "sea"),
        Sample("bake a sourdough loaf", "default"),
        Sample("knead the dough twice", "default"),
    ]
    table = make_table(
        [route("sea", ["reef the topsail", *(s.text for s in tuning if s.route == "sea")])],
        default=["roast a chicken", *(s.text for s in tuning if s.route == "default")],
        method="knn",
        k=1,
    )
    assert learned(table, tuning) == tuning
    assert learned(table, [Sample("a new prompt", "sea")]) == []
    built: list[RouteTable] = []

    def build(fold_table: RouteTable) -> RouteIndex:
        built.append(fold_table)
        return asyncio.run(RouteIndex.build(fold_table, embedder.embed_many))

    in_sample = gather(build(table), embedder, tuning)
    built.clear()
    held_out = out_of_fold(build, embedder, table, tuning, 2)
    # Two folds, each without its own prompts and with everything else.
    assert len(built) == 2
    for fold_table, held in zip(built, folds_of(tuning, 2), strict=True):
        kept = {u for r in fold_table.routes for u in r.utterances} | set(
            fold_table.default.utterances
        )
        assert kept.isdisjoint(tuning[i].text for i in held)
        assert {"reef the topsail", "roast a chicken"} <= kept
        assert len(kept) == 2 + len(tuning) - len(held)
    # In sample, each prompt finds itself (cosine 1); out of fold it cannot.
    for sample, inside, outside in zip(tuning, in_sample, held_out, strict=True):
        assert inside.scores[sample.route] == pytest.approx(1.0)
        assert outside.scores[sample.route] < 0.99
