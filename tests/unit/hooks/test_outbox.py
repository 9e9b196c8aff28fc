"""The outbox: messages commit with the change they announce or not at all, go only to the
subscriptions that want them, and subscriptions are checked whole before anything is kept."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import Conflict, InvalidRequest, RouteNotFound
from gateway.hooks.events import HookEvent, body_of
from gateway.hooks.outbox import Outbox, new_message_id
from gateway.hooks.signing import fingerprint, new_secret, secret_problem
from gateway.registry.schema import Adapter, HookMessageRow, HookSubscriptionRow

pytestmark = pytest.mark.timeout(60)
RECEIVER = "http://127.0.0.1:9/hooks"


def _messages(sessions: sessionmaker[Session]) -> list[HookMessageRow]:
    with sessions() as session:
        return list(session.scalars(select(HookMessageRow).order_by(HookMessageRow.id)))


def test_a_rolled_back_change_leaves_no_message(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    outbox.create(RECEIVER, [], "", "tester")
    with pytest.raises(RuntimeError), sessions.begin() as session:
        session.add(Adapter(name="pirate"))
        assert len(outbox.enqueue(session, HookEvent.ROLLOUT_PROMOTED, {"route": "pirate"})) == 1
        raise RuntimeError("the change failed")
    assert _messages(sessions) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Adapter)) == 0


def test_a_committed_change_commits_its_messages(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    sub, _ = outbox.create(RECEIVER, [], "", "tester")
    with sessions.begin() as session:
        session.add(Adapter(name="pirate"))
        outbox.enqueue(session, "rollout.started", {"route": "pirate", "candidate": 2})
    [message] = _messages(sessions)
    assert message.subscription_id == sub.id
    assert message.status == "pending" and message.attempts == 0
    assert message.next_attempt_at <= datetime.now(UTC)
    assert (message.deadline_at - message.created_at).total_seconds() == pytest.approx(86_400)
    assert json.loads(message.body)["data"] == {"route": "pirate", "candidate": 2}


def test_enqueue_neither_flushes_nor_commits_the_callers_changes(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    outbox.create(RECEIVER, [], "", "tester")
    with sessions.begin() as session:
        adapter = Adapter(name="pirate")
        session.add(adapter)
        rows = outbox.enqueue(session, HookEvent.ROLLOUT_PAUSED, {})
        assert adapter in session.new
        assert all(row in session.new for row in rows)


def test_only_active_subscriptions_that_want_the_event_get_it(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    every, _ = outbox.create(RECEIVER, [], "all of them", "tester")
    promotions, _ = outbox.create(RECEIVER, ["rollout.promoted"], "", "tester")
    alarms, _ = outbox.create(RECEIVER, ["rollout.alarm", "rollout.verdict"], "", "tester")
    removed, _ = outbox.create(RECEIVER, [], "", "tester")
    outbox.delete(removed.id)
    with sessions.begin() as session:
        outbox.enqueue(session, HookEvent.ROLLOUT_PROMOTED, {"route": "pirate"})
        outbox.enqueue(session, HookEvent.ROLLOUT_ALARM, {"route": "pirate"})
    got = [(m.subscription_id, m.event) for m in _messages(sessions)]
    assert sorted(got) == sorted(
        [
            (every.id, "rollout.promoted"),
            (promotions.id, "rollout.promoted"),
            (every.id, "rollout.alarm"),
            (alarms.id, "rollout.alarm"),
        ]
    )
    ids = [m.message_id for m in _messages(sessions)]
    assert len(set(ids)) == len(ids)


def test_enqueue_without_subscribers_is_one_query(
    outbox: Outbox, sessions: sessionmaker[Session], engine: Engine
) -> None:
    statements: list[str] = []
    with sessions.begin() as session:
        session.connection()  # the transaction's own BEGIN is not enqueue's

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", count)
        try:
            assert outbox.enqueue(session, HookEvent.ROLLOUT_STARTED, {}) == []
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1 and "hook_subscriptions" in statements[0]


def test_an_unknown_event_is_not_enqueued(outbox: Outbox, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(ValueError, match=r"rollout\.exploded"):
        outbox.enqueue(session, "rollout.exploded", {})


def test_waking_follows_the_commit_not_the_enqueue(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    woken: list[int] = []
    outbox.on_commit(lambda: woken.append(1))
    outbox.create(RECEIVER, [], "", "tester")
    with pytest.raises(RuntimeError), sessions.begin() as session:
        outbox.enqueue(session, HookEvent.ROLLOUT_STARTED, {})
        raise RuntimeError
    assert woken == []
    with sessions.begin() as session:
        outbox.enqueue(session, HookEvent.ROLLOUT_STARTED, {})
        assert woken == []
    assert woken == [1]


def test_every_problem_of_a_subscription_is_refused_at_once(
    sessions: sessionmaker[Session],
) -> None:
    outbox = Outbox(sessions, own_addresses=[("127.0.0.1", 8000)])
    with pytest.raises(InvalidRequest) as caught:
        outbox.create(
            "http://localhost:8000/hooks",
            ["rollout.started", "rollout.exploded"],
            "",
            "tester",
            secret="not-a-secret",
        )
    error = caught.value
    assert (error.param, error.code) == ("url", "invalid_hook_url")
    assert "gateway itself" in error.message
    assert "unknown events rollout.exploded; known events: rollout.started," in error.message
    assert "secret must start with 'whsec_'" in error.message
    assert "not-a-secret" not in error.message
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(HookSubscriptionRow)) == 0


def test_a_subscription_keeps_a_given_secret_or_gets_a_new_one(outbox: Outbox) -> None:
    given = new_secret()
    row, secret = outbox.create(RECEIVER, ["rollout.promoted"] * 2, "mine", "tester", given)
    assert secret == given and row.events == ["rollout.promoted"]
    _, made = outbox.create(RECEIVER, [], "", "tester")
    assert made.startswith("whsec_") and secret_problem(made) is None and made != given
    assert secret_problem("whsec_" + "QUJD") == "secret must encode 24 to 64 random bytes, not 3"
    assert secret_problem("whsec_***") is not None


def test_removing_a_subscription_keeps_its_history_and_drops_what_is_pending(
    outbox: Outbox, sessions: sessionmaker[Session]
) -> None:
    sub, secret = outbox.create(RECEIVER, [], "", "tester")
    assert fingerprint(secret) == fingerprint(outbox.get(sub.id).secret)
    with sessions.begin() as session:
        outbox.enqueue(session, HookEvent.ROLLOUT_ABORTED, {"route": "pirate"})
    removed = outbox.delete(sub.id)
    assert not removed.active and removed.secret == ""
    assert outbox.list() == [] and [s.id for s in outbox.list(include_removed=True)] == [sub.id]
    [view] = outbox.messages(sub.id)
    assert (view.message.status, view.message.last_error) == ("dead", "subscription removed")
    assert outbox.stats().dead == 1 and outbox.stats().pending == 0
    assert outbox.delete(sub.id).active is False  # removing again changes nothing
    with pytest.raises(Conflict):
        outbox.send_test(sub.id, hold_s=1.0)


def test_an_unknown_subscription_is_not_found(outbox: Outbox) -> None:
    for call in (outbox.get, outbox.delete, outbox.messages):
        with pytest.raises(RouteNotFound) as caught:
            call(404)
        assert caught.value.code == "hook_not_found"


def test_the_body_is_compact_sorted_json_with_type_timestamp_and_data() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    body = body_of(HookEvent.ROLLOUT_VERDICT, {"z": 1, "a": {"when": at}}, at)
    assert body == (
        '{"data":{"a":{"when":"2026-01-02T03:04:05.600000Z"},"z":1},'
        '"timestamp":"2026-01-02T03:04:05.600000Z","type":"rollout.verdict"}'
    )


def test_message_ids_are_unique_and_sortable_by_time() -> None:
    ids = [new_message_id() for _ in range(1000)]
    assert all(re.fullmatch(r"msg_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert len(set(ids)) == 1000
    assert ids[0][:14] <= ids[-1][:14]
