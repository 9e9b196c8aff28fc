"""A rollout's evidence against its candidate: the candidate's answers that did badly.

A served canary answer (a `responses` row of the rollout, variant `canary`) is evidence when
a verifier failed it, a score with no verdict (a reward model's, a judge's grade) is below
`reward_below`, its user rated it below the middle, or it was an error. A shadow pair is
evidence when its candidate side (scores `p<pair id>:shadow`) failed a verifier, scored
below `reward_below`, or errored.

The test is made in SQL, so a page holds `limit` pieces of evidence whatever share of the
answers they are; each page is in id order, after the id `after`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, String, cast, exists, literal, or_, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.registry.schema import FeedbackRow, ResponseRow, ScoreRow, ShadowPairRow

# A rating below the middle of the 0..1 scale is a bad one (`Rating.passed` is False).
NEGATIVE_BELOW = 0.5
# Statuses from here on are errors.
ERROR_FROM = 400
# The side of a shadow pair the candidate answered (see `quality.scoring`).
CANDIDATE_SIDE = "shadow"


@dataclass(frozen=True, slots=True)
class Reason:
    """One signal that makes an answer evidence: `verifier:<scorer>`, `reward:<scorer>`,
    `feedback` or `error`."""

    signal: str
    value: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class CanaryEvidence:
    """A served canary answer with why it is evidence."""

    response: ResponseRow
    reasons: list[Reason]


@dataclass(frozen=True, slots=True)
class ShadowEvidence:
    """A shadow pair with why its candidate side is evidence."""

    pair: ShadowPairRow
    reasons: list[Reason]


class EvidenceStore:
    """Reads a rollout's evidence against its candidate from the registry."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def canary(
        self, rollout_id: int, *, after: int, limit: int, reward_below: float | None
    ) -> list[CanaryEvidence]:
        """Canary answers that are evidence, by response id, after the id `after`."""
        bad_score = exists().where(ScoreRow.response_id == ResponseRow.id, _counts(reward_below))
        bad_rating = exists().where(
            FeedbackRow.response_id == ResponseRow.id, FeedbackRow.value < NEGATIVE_BELOW
        )
        query = (
            select(ResponseRow)
            .where(
                ResponseRow.rollout_id == rollout_id,
                ResponseRow.variant == "canary",
                ResponseRow.id > after,
                or_(ResponseRow.status >= ERROR_FROM, bad_score, bad_rating),
            )
            .order_by(ResponseRow.id)
            .limit(limit)
        )
        with self._sessions() as session:
            rows = session.scalars(query).all()
            ids = [row.id for row in rows]
            scores: defaultdict[int | None, list[ScoreRow]] = defaultdict(list)
            for score in session.scalars(
                select(ScoreRow).where(ScoreRow.response_id.in_(ids), _counts(reward_below))
            ):
                scores[score.response_id].append(score)
            ratings = {
                rating.response_id: rating
                for rating in session.scalars(
                    select(FeedbackRow).where(
                        FeedbackRow.response_id.in_(ids), FeedbackRow.value < NEGATIVE_BELOW
                    )
                )
            }
        return [
            CanaryEvidence(
                row, _reasons(row.status, scores[row.id], ratings.get(row.id), reward_below)
            )
            for row in rows
        ]

    def shadow(
        self, rollout_id: int, *, after: int, limit: int, reward_below: float | None
    ) -> list[ShadowEvidence]:
        """Shadow pairs whose candidate side is evidence, by pair id, after the id `after`."""
        subject = literal("p") + cast(ShadowPairRow.id, String) + literal(f":{CANDIDATE_SIDE}")
        bad_score = exists().where(ScoreRow.subject == subject, _counts(reward_below))
        query = (
            select(ShadowPairRow)
            .where(
                ShadowPairRow.rollout_id == rollout_id,
                ShadowPairRow.id > after,
                or_(ShadowPairRow.shadow_status >= ERROR_FROM, bad_score),
            )
            .order_by(ShadowPairRow.id)
            .limit(limit)
        )
        with self._sessions() as session:
            pairs = session.scalars(query).all()
            subjects = {f"p{pair.id}:{CANDIDATE_SIDE}": pair.id for pair in pairs}
            scores: defaultdict[int, list[ScoreRow]] = defaultdict(list)
            for score in session.scalars(
                select(ScoreRow).where(ScoreRow.subject.in_(subjects), _counts(reward_below))
            ):
                scores[subjects[score.subject]].append(score)
        return [
            ShadowEvidence(pair, _reasons(pair.shadow_status, scores[pair.id], None, reward_below))
            for pair in pairs
        ]


def _counts(reward_below: float | None) -> ColumnElement[bool]:
    """The scores that make an answer evidence: failed verdicts, and values below
    `reward_below` of scores with no verdict (none of those when it is None)."""
    failed = ScoreRow.passed.is_(False)
    if reward_below is None:
        return failed
    return or_(failed, ScoreRow.passed.is_(None) & (ScoreRow.value < reward_below))


def _reasons(
    status: int,
    scores: Sequence[ScoreRow],
    rating: FeedbackRow | None,
    reward_below: float | None,
) -> list[Reason]:
    """Why an answer is evidence: its error, its scores (by scorer), its rating."""
    reasons: list[Reason] = []
    if status >= ERROR_FROM:
        reasons.append(Reason("error", None, f"status {status}"))
    for score in sorted(scores, key=lambda s: s.scorer):
        if score.passed is False:
            reasons.append(Reason(f"verifier:{score.scorer}", score.value, score.detail))
        elif score.passed is None and reward_below is not None and score.value < reward_below:
            reasons.append(Reason(f"reward:{score.scorer}", score.value, score.detail))
    if rating is not None and rating.value < NEGATIVE_BELOW:
        reasons.append(Reason("feedback", rating.value, _rating_detail(rating)))
    return reasons


def _rating_detail(rating: FeedbackRow) -> str:
    """The rating as sent, its tags and its comment, on one line."""
    parts = [json.dumps(rating.rating, sort_keys=True)]
    if rating.tags:
        parts.append("tags: " + ", ".join(rating.tags))
    if rating.comment:
        parts.append(f"comment: {rating.comment}")
    return "; ".join(parts)
