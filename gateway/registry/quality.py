"""Quality records in the registry: the response log, feedback, scores and their aggregates.

Every rating and every score changes its rollout's per-variant aggregate in the transaction
that stores it, so the running sums always equal what is stored, whatever crashes when: a
record is either there and counted, or neither. A rating sent again replaces the earlier one
(kept in its history) and moves the sums by the difference.

The bounded sample of raw values per (rollout, variant, signal) is a slot sample: an item
hashes to one of `RESERVOIR_SLOTS` slots and a slot keeps the item of lowest rank (a second
hash). Each slot holds a uniform pick among the items that hashed to it, the result does not
depend on the order replicas write in, and an updated rating updates its value in place.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Insert, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import ResponseNotFound
from gateway.registry.schema import (
    FeedbackRow,
    ResponseRow,
    ScoreRow,
    SignalAggregateRow,
    SignalReservoirRow,
    utcnow,
)

RESERVOIR_SLOTS = 512
# The signal of users' ratings.
SATISFACTION = "satisfaction"
UsageKey = Literal["tenant", "route", "version", "variant", "endpoint"]
USAGE_KEYS: tuple[UsageKey, ...] = ("tenant", "route", "version", "variant", "endpoint")


@dataclass(frozen=True)
class Rating:
    """A user's rating of one answer: as sent, and as a value from 0 (bad) to 1 (good)."""

    raw: dict[str, Any]
    value: float
    comment: str | None
    tags: list[str]

    @property
    def passed(self) -> bool | None:
        """Good (above the middle), bad (below it) or neither (exactly the middle)."""
        return None if self.value == 0.5 else self.value > 0.5


@dataclass(frozen=True)
class Feedback:
    """A stored rating with the response it rates."""

    feedback: FeedbackRow
    response: ResponseRow
    created: bool = False


@dataclass(frozen=True)
class NewScore:
    """One scorer's result on one answer: a served one (named by tenant and request id; its
    subject is then `r<response id>`) or a shadow pair's (`subject` `p<pair id>:<side>`)."""

    subject: str
    scorer: str
    route: str
    version: int | None
    variant: str | None
    rollout_id: int | None
    value: float
    passed: bool | None
    detail: str = ""
    # The answer's response record, when it was a served answer (not a shadow one).
    tenant: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class Totals:
    """Running sums of one signal of one variant."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    passes: int = 0
    fails: int = 0

    def plus(self, value: float, passed: bool | None, sign: int = 1) -> Totals:
        """These sums with one value added (`sign` 1) or taken out (-1)."""
        return Totals(
            self.count + sign,
            self.total + sign * value,
            self.total_sq + sign * value * value,
            self.passes + sign * (passed is True),
            self.fails + sign * (passed is False),
        )

    def minus(self, other: Totals) -> Totals:
        """These sums with `other`'s taken out."""
        return Totals(
            self.count - other.count,
            self.total - other.total,
            self.total_sq - other.total_sq,
            self.passes - other.passes,
            self.fails - other.fails,
        )

    def as_list(self) -> list[float]:
        """The sums as a JSON list (kept in the analysis's state)."""
        return [self.count, self.total, self.total_sq, self.passes, self.fails]

    @classmethod
    def from_list(cls, raw: list[float] | None) -> Totals:
        """The sums `as_list` wrote (empty or None: zeros)."""
        if not raw:
            return cls()
        count, total, total_sq, passes, fails = raw
        return cls(int(count), float(total), float(total_sq), int(passes), int(fails))


@dataclass(frozen=True)
class UsageRow:
    """Requests and tokens of one group of the response log."""

    key: dict[str, Any]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class QualityStore:
    """Responses, feedback, scores and aggregates in the registry's database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        # Read-modify-write of a rating is one transaction; on SQLite the read happens before
        # the write lock is taken, so this process's writers also take turns.
        self._write = threading.Lock()

    # -- the response log ---------------------------------------------------------------

    def add_responses(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert response records; a (tenant, request id) already stored keeps its first."""
        if not rows:
            return
        with self._sessions.begin() as session:
            insert = _insert(session, ResponseRow).on_conflict_do_nothing(
                index_elements=["tenant", "request_id"]
            )
            session.execute(insert, [dict(row) for row in rows])

    def response(self, tenant: str, request_id: str, *, newer_than: datetime) -> ResponseRow:
        """`tenant`'s response `request_id`; ResponseNotFound when unknown or expired."""
        with self._sessions() as session:
            return _response(session, tenant, request_id, newer_than)

    def usage(
        self, since: datetime, until: datetime, by: Sequence[UsageKey], limit: int = 1000
    ) -> list[UsageRow]:
        """Requests, errors and tokens per group of `by`, largest token use first."""
        columns = [getattr(ResponseRow, key) for key in by]
        tokens = func.coalesce(func.sum(ResponseRow.prompt_tokens), 0) + func.coalesce(
            func.sum(ResponseRow.completion_tokens), 0
        )
        query = (
            select(
                *columns,
                func.count(),
                func.sum(case((ResponseRow.status >= 400, 1), else_=0)),
                func.coalesce(func.sum(ResponseRow.prompt_tokens), 0),
                func.coalesce(func.sum(ResponseRow.completion_tokens), 0),
            )
            .where(ResponseRow.at >= since, ResponseRow.at < until)
            .group_by(*columns)
            .order_by(tokens.desc(), func.count().desc())
            .limit(limit)
        )
        with self._sessions() as session:
            result = session.execute(query).all()
        n = len(by)
        return [
            UsageRow(
                dict(zip(by, row[:n], strict=True)),
                int(row[n]),
                int(row[n + 1] or 0),
                int(row[n + 2]),
                int(row[n + 3]),
            )
            for row in result
        ]

    def expire(self, records_before: datetime, text_before: datetime) -> tuple[int, int]:
        """Delete records (with their feedback and scores) older than `records_before` and
        the text of those older than `text_before`: (records deleted, texts cleared)."""
        with self._sessions.begin() as session:
            # Explicitly, not by ON DELETE CASCADE alone: SQLite enforces foreign keys only on
            # connections that turned them on.
            old = select(ResponseRow.id).where(ResponseRow.at < records_before)
            session.execute(delete(FeedbackRow).where(FeedbackRow.response_id.in_(old)))
            session.execute(delete(ScoreRow).where(ScoreRow.response_id.in_(old)))
            deleted = session.execute(delete(ResponseRow).where(ResponseRow.at < records_before))
            cleared = session.execute(
                update(ResponseRow)
                .where(
                    ResponseRow.at < text_before,
                    (ResponseRow.prompt_text.is_not(None)) | (ResponseRow.answer_text.is_not(None)),
                )
                .values(prompt_text=None, answer_text=None)
            )
        return int(getattr(deleted, "rowcount", 0)), int(getattr(cleared, "rowcount", 0))

    # -- feedback -----------------------------------------------------------------------

    def put_feedback(
        self, tenant: str, request_id: str, rating: Rating, *, newer_than: datetime
    ) -> Feedback:
        """Store (or replace) the rating of `tenant`'s response, moving its aggregate."""
        for attempt in range(3):
            try:
                with self._write, self._sessions.begin() as session:
                    return self._put_feedback(session, tenant, request_id, rating, newer_than)
            except IntegrityError:
                # Another replica stored the first rating of this response at the same time:
                # read it and replace it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _put_feedback(
        self, session: Session, tenant: str, request_id: str, rating: Rating, newer_than: datetime
    ) -> Feedback:
        response = _response(session, tenant, request_id, newer_than)
        row = session.scalar(
            select(FeedbackRow).where(FeedbackRow.response_id == response.id).with_for_update()
        )
        now = utcnow()
        delta = Totals().plus(rating.value, rating.passed)
        created = row is None
        if row is None:
            row = FeedbackRow(response_id=response.id, history=[], created_at=now)
            session.add(row)
        else:
            old = Rating(row.rating, row.value, row.comment, list(row.tags))
            delta = delta.minus(Totals().plus(old.value, old.passed))
            row.history = [
                *row.history,
                {
                    "rating": row.rating,
                    "value": row.value,
                    "comment": row.comment,
                    "tags": row.tags,
                    "at": row.updated_at.isoformat(),
                },
            ]
        row.rating, row.value, row.comment, row.tags = (
            rating.raw,
            rating.value,
            rating.comment,
            rating.tags,
        )
        row.updated_at = now
        session.flush()
        if response.rollout_id is not None and response.variant is not None:
            key = (response.rollout_id, response.variant, SATISFACTION)
            _bump(session, key, delta)
            _sample(session, key, f"r{response.id}", rating.value)
        return Feedback(row, response, created)

    def feedback(self, tenant: str, request_id: str, *, newer_than: datetime) -> Feedback:
        """The rating of `tenant`'s response; ResponseNotFound when there is none."""
        with self._sessions() as session:
            response = _response(session, tenant, request_id, newer_than)
            row = session.scalar(select(FeedbackRow).where(FeedbackRow.response_id == response.id))
            if row is None:
                raise ResponseNotFound(
                    f"response {request_id!r} has no feedback", param="response_id"
                )
            return Feedback(row, response)

    # -- scores -------------------------------------------------------------------------

    def add_scores(self, scores: Iterable[NewScore]) -> int:
        """Store scores (one per subject and scorer: repeats are ignored) and move their
        aggregates, all in one transaction; the number stored."""
        scores = list(scores)
        with self._write, self._sessions.begin() as session:
            ids = _response_ids(session, scores)
            rows: list[dict[str, Any]] = []
            for score in scores:
                response_id = None
                subject = score.subject
                if score.tenant is not None and score.request_id is not None:
                    response_id = ids.get((score.tenant, score.request_id))
                    if response_id is None:
                        continue  # expired before it was scored
                    subject = f"r{response_id}"
                rows.append(
                    {
                        "subject": subject,
                        "response_id": response_id,
                        "rollout_id": score.rollout_id,
                        "route": score.route,
                        "version": score.version,
                        "variant": score.variant,
                        "scorer": score.scorer,
                        "value": score.value,
                        "passed": score.passed,
                        "detail": score.detail[:512],
                        "created_at": utcnow(),
                    }
                )
            if not rows:
                return 0
            # No savepoints: on SQLite one would open (and commit) a transaction of its own.
            inserted = set(
                session.execute(
                    _insert(session, ScoreRow)
                    .values(rows)
                    .on_conflict_do_nothing(index_elements=["subject", "scorer"])
                    .returning(ScoreRow.subject, ScoreRow.scorer)
                ).tuples()
            )
            deltas: dict[tuple[int, str, str], Totals] = {}
            samples: list[tuple[tuple[int, str, str], str, float]] = []
            for row in rows:
                if (row["subject"], row["scorer"]) not in inserted:
                    continue
                if row["rollout_id"] is None or row["variant"] is None:
                    continue
                key = (row["rollout_id"], row["variant"], row["scorer"])
                deltas[key] = deltas.get(key, Totals()).plus(row["value"], row["passed"])
                samples.append((key, row["subject"], row["value"]))
            for key, delta in deltas.items():
                _bump(session, key, delta)
            _sample_many(session, samples)
        return len(inserted)

    # -- aggregates ---------------------------------------------------------------------

    def aggregates(self, rollout_id: int) -> dict[tuple[str, str], Totals]:
        """The running sums of a rollout, by (variant, signal)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(SignalAggregateRow).where(SignalAggregateRow.rollout_id == rollout_id)
            ).all()
        return {
            (r.variant, r.signal): Totals(r.count, r.total, r.total_sq, r.passes, r.fails)
            for r in rows
        }

    def reservoir(self, rollout_id: int, variant: str, signal: str) -> list[float]:
        """The sampled raw values of one signal of one variant."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(SignalReservoirRow.value).where(
                        SignalReservoirRow.rollout_id == rollout_id,
                        SignalReservoirRow.variant == variant,
                        SignalReservoirRow.signal == signal,
                    )
                ).all()
            )

    def recount(self, rollout_id: int) -> dict[tuple[str, str], Totals]:
        """The sums recomputed from the stored ratings and scores (to check the aggregates)."""
        sums: dict[tuple[str, str], Totals] = {}
        with self._sessions() as session:
            ratings = session.execute(
                select(ResponseRow.variant, FeedbackRow.value)
                .join(ResponseRow, FeedbackRow.response_id == ResponseRow.id)
                .where(ResponseRow.rollout_id == rollout_id, ResponseRow.variant.is_not(None))
            ).all()
            scores = session.execute(
                select(ScoreRow.variant, ScoreRow.scorer, ScoreRow.value, ScoreRow.passed).where(
                    ScoreRow.rollout_id == rollout_id, ScoreRow.variant.is_not(None)
                )
            ).all()
        for variant, value in ratings:
            key = (str(variant), SATISFACTION)
            sums[key] = sums.get(key, Totals()).plus(value, Rating({}, value, None, []).passed)
        for variant, scorer, value, passed in scores:
            key = (str(variant), str(scorer))
            sums[key] = sums.get(key, Totals()).plus(value, passed)
        return sums


def _response(session: Session, tenant: str, request_id: str, newer_than: datetime) -> ResponseRow:
    row = session.scalar(
        select(ResponseRow).where(
            ResponseRow.tenant == tenant,
            ResponseRow.request_id == request_id,
            ResponseRow.at >= newer_than,
        )
    )
    if row is None:
        raise ResponseNotFound(
            f"no response {request_id!r} of this API key (unknown or expired)",
            param="response_id",
        )
    return row


def _response_ids(session: Session, scores: list[NewScore]) -> dict[tuple[str, str], int]:
    """The response record ids of the served answers among `scores`, in one query per tenant."""
    wanted: dict[str, set[str]] = {}
    for score in scores:
        if score.tenant is not None and score.request_id is not None:
            wanted.setdefault(score.tenant, set()).add(score.request_id)
    found: dict[tuple[str, str], int] = {}
    for tenant, request_ids in wanted.items():
        rows = session.execute(
            select(ResponseRow.request_id, ResponseRow.id).where(
                ResponseRow.tenant == tenant, ResponseRow.request_id.in_(request_ids)
            )
        )
        found.update({(tenant, request_id): id_ for request_id, id_ in rows.tuples()})
    return found


def _bump(session: Session, key: tuple[int, str, str], delta: Totals) -> None:
    """Add `delta` to one aggregate row (created at the first value), in one statement."""
    rollout_id, variant, signal = key
    insert = _insert(session, SignalAggregateRow).values(
        rollout_id=rollout_id,
        variant=variant,
        signal=signal,
        count=delta.count,
        total=delta.total,
        total_sq=delta.total_sq,
        passes=delta.passes,
        fails=delta.fails,
    )
    table = SignalAggregateRow.__table__
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["rollout_id", "variant", "signal"],
            set_={
                column: table.c[column] + insert.excluded[column]
                for column in ("count", "total", "total_sq", "passes", "fails")
            },
        )
    )


def _sample(session: Session, key: tuple[int, str, str], item: str, value: float) -> None:
    """Offer one value to the signal's slot sample (or update the item's value there)."""
    _sample_many(session, [(key, item, value)])


def _sample_many(session: Session, offers: list[tuple[tuple[int, str, str], str, float]]) -> None:
    """Offer values to their signals' slot samples, in one statement executed for each."""
    if not offers:
        return
    params = []
    for (rollout_id, variant, signal), item, value in offers:
        digest = hashlib.blake2b(item.encode(), digest_size=16).digest()
        params.append(
            {
                "rollout_id": rollout_id,
                "variant": variant,
                "signal": signal,
                "slot": int.from_bytes(digest[:8], "big") % RESERVOIR_SLOTS,
                # A second hash, cut to fit a signed 64-bit column.
                "rank": int.from_bytes(digest[8:], "big") >> 2,
                "item": item,
                "value": value,
            }
        )
    insert = _insert(session, SignalReservoirRow)
    table = SignalReservoirRow.__table__
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["rollout_id", "variant", "signal", "slot"],
            set_={
                "item": insert.excluded.item,
                "rank": insert.excluded.rank,
                "value": insert.excluded.value,
            },
            where=(table.c.rank > insert.excluded.rank) | (table.c.item == insert.excluded.item),
        ),
        params,
    )


def _insert(session: Session, model: Any) -> Any:
    """The dialect's INSERT (both know ON CONFLICT) for `model`."""
    dialect = session.get_bind().dialect.name
    insert: Insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)
    return insert
