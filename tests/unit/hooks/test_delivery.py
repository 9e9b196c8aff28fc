"""The delivery worker against a real loopback receiver: signed messages that verify, retries
under the same webhook-id, per-attempt timeouts that keep a hanging receiver from delaying
anyone else, dead messages past their deadline, and leases that keep two workers (two
replicas) from sending one message at the same time."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import HookSettings
from gateway.hooks.claims import Claims
from gateway.hooks.outbox import Outbox
from gateway.metrics import Metrics
from gateway.registry.schema import HookAttemptRow, HookMessageRow
from gateway.testing.receiver import Behaviour, WebhookReceiver

from .conftest import FAST, Workers, eventually

pytestmark = pytest.mark.timeout(60)
Receiver = tuple[WebhookReceiver, str]


def _subscribe(
    outbox: Outbox, receiver: Receiver, path: str, behaviour: Behaviour | None = None
) -> int:
    app, url = receiver
    row, secret = outbox.create(url + path, [], "", "tester")
    app.expect(path, secret, behaviour)
    return row.id


def _enqueue(
    outbox: Outbox, sessions: sessionmaker[Session], n: int = 1, event: str = "rollout.promoted"
) -> list[str]:
    ids = []
    for i in range(n):
        with sessions.begin() as session:
            rows = outbox.enqueue(session, event, {"route": "pirate", "n": i})
            ids += [row.message_id for row in rows]
    return ids


def _message(sessions: sessionmaker[Session], message_id: str) -> HookMessageRow:
    with sessions() as session:
        row = session.scalar(select(HookMessageRow).where(HookMessageRow.message_id == message_id))
        assert row is not None
        return row


def _status(sessions: sessionmaker[Session], message_id: str) -> str:
    return _message(sessions, message_id).status


def _attempts(sessions: sessionmaker[Session], message_id: str) -> list[HookAttemptRow]:
    with sessions() as session:
        return list(
            session.scalars(
                select(HookAttemptRow)
                .join(HookMessageRow, HookMessageRow.id == HookAttemptRow.message_id)
                .where(HookMessageRow.message_id == message_id)
                .order_by(HookAttemptRow.id)
            )
        )


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _counted(metrics: Metrics, attempts: int) -> None:
    """Wait until the worker has counted `attempts` (it does so after the row is written)."""
    name = "gateway_hook_attempt_duration_seconds_count"
    await eventually(lambda: _sample(metrics, name) == attempts)


async def test_a_message_is_delivered_signed_so_the_receiver_can_verify_it(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    _subscribe(outbox, receiver, "/pipeline")
    metrics = Metrics()
    await workers(metrics=metrics)
    [message_id] = _enqueue(outbox, sessions)
    await eventually(lambda: _status(sessions, message_id) == "delivered")
    await _counted(metrics, 1)
    [got] = app.received
    assert got.verified and got.webhook_id == message_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "lora-gateway-hooks"
    assert got.headers["webhook-signature"].startswith("v1,")
    assert abs(int(got.timestamp) - time.time()) < 5
    assert got.payload["type"] == "rollout.promoted"
    assert got.payload["data"] == {"route": "pirate", "n": 0}
    assert got.body.decode() == _message(sessions, message_id).body
    labels = {"event": "rollout.promoted", "result": "delivered"}
    assert _sample(metrics, "gateway_hook_deliveries_total", **labels) == 1
    assert _sample(metrics, "gateway_hook_attempts_total", result="ok") == 1
    assert _sample(metrics, "gateway_hook_delivery_seconds_count") == 1


async def test_a_refused_message_is_sent_again_with_the_same_id_until_taken(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    _subscribe(outbox, receiver, "/flaky", Behaviour(statuses=deque([500, 500, 500])))
    metrics = Metrics()
    await workers(metrics=metrics)
    [message_id] = _enqueue(outbox, sessions)
    await eventually(lambda: _status(sessions, message_id) == "delivered")
    await _counted(metrics, 4)
    assert [r.answered for r in app.received] == [500, 500, 500, 200]
    assert {r.webhook_id for r in app.received} == {message_id}
    assert all(r.verified for r in app.received)
    assert [int(r.timestamp) for r in app.received] == sorted(
        int(r.timestamp) for r in app.received
    )
    attempts = _attempts(sessions, message_id)
    assert [a.status for a in attempts] == [500, 500, 500, 200]
    assert [a.error for a in attempts] == ["HTTP 500: answer 500"] * 3 + [None]
    assert all(a.latency_ms > 0 for a in attempts)
    row = _message(sessions, message_id)
    assert (row.attempts, row.last_status, row.last_error) == (4, 200, None)
    assert _sample(metrics, "gateway_hook_attempts_total", result="retry") == 3
    assert _sample(metrics, "gateway_hook_attempts_total", result="ok") == 1
    assert _sample(metrics, "gateway_hook_attempt_duration_seconds_count") == 4


async def test_a_hanging_receiver_does_not_delay_a_healthy_one(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    _subscribe(outbox, receiver, "/hangs", Behaviour(hang=True))
    _subscribe(outbox, receiver, "/healthy")
    await workers(HookSettings(poll_s=0.05, attempt_timeout_s=2.0, per_subscription=2))
    ids = _enqueue(outbox, sessions, n=4)
    hung, healthy = ids[0::2], ids[1::2]
    waited = await eventually(
        lambda: all(_status(sessions, i) == "delivered" for i in healthy), within_s=1.5
    )
    assert waited < 1.0
    assert all(_status(sessions, i) == "pending" for i in hung)
    # At most `per_subscription` attempts hang at once; each gives up at its own timeout.
    assert app.max_in_flight_per_path["/hangs"] == 2
    await eventually(lambda: bool(_attempts(sessions, hung[0])), within_s=4)
    [attempt] = _attempts(sessions, hung[0])
    assert attempt.status is None and attempt.error == "no answer within 2 s"
    assert 1900 < attempt.latency_ms < 3000


async def test_a_message_past_its_deadline_is_dead(
    sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    outbox = Outbox(sessions, deadline_s=0.5)
    _subscribe(outbox, receiver, "/down", Behaviour(status=503))
    metrics = Metrics()
    await workers(metrics=metrics)
    [message_id] = _enqueue(outbox, sessions, event="rollout.rolled_back")
    await eventually(lambda: _status(sessions, message_id) == "dead", within_s=3)
    row = _message(sessions, message_id)
    await _counted(metrics, row.attempts)
    assert row.attempts >= 1 and row.last_status == 503
    assert len(_attempts(sessions, message_id)) == row.attempts
    dead = {"event": "rollout.rolled_back", "result": "dead"}
    assert _sample(metrics, "gateway_hook_deliveries_total", **dead) == 1
    assert _sample(metrics, "gateway_hook_attempts_total", result="failed") == 1
    assert _sample(metrics, "gateway_hook_attempts_total", result="retry") == row.attempts - 1
    await eventually(lambda: _sample(metrics, "gateway_hook_dead") == 1, within_s=3)


async def test_a_message_found_after_its_deadline_is_dead_unsent(
    sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    outbox = Outbox(sessions, deadline_s=3600)
    _subscribe(outbox, receiver, "/late")
    [message_id] = _enqueue(outbox, sessions, event="rollout.verdict")
    with sessions.begin() as session:  # no worker ran for a day
        row = session.scalar(select(HookMessageRow).where(HookMessageRow.message_id == message_id))
        assert row is not None
        row.created_at -= timedelta(days=1)
        row.deadline_at -= timedelta(days=1)
    metrics = Metrics()
    await workers(metrics=metrics)
    await eventually(lambda: _status(sessions, message_id) == "dead")
    row = _message(sessions, message_id)
    assert (row.attempts, row.last_error) == (0, "deadline passed before it could be sent")
    dead = {"event": "rollout.verdict", "result": "dead"}
    await eventually(lambda: _sample(metrics, "gateway_hook_deliveries_total", **dead) == 1)
    assert app.received == []


async def test_two_workers_never_send_one_message_at_the_same_time(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    _subscribe(outbox, receiver, "/slow", Behaviour(delay_s=0.2))
    settings = HookSettings(poll_s=0.01, attempt_timeout_s=2.0, per_subscription=8)
    await workers(settings)
    await workers(settings)
    ids = _enqueue(outbox, sessions, n=20)
    await eventually(lambda: all(_status(sessions, i) == "delivered" for i in ids), within_s=10)
    sent = Counter(r.webhook_id for r in app.received)
    assert sent == Counter(dict.fromkeys(ids, 1))
    assert max(app.max_in_flight_per_id.values()) == 1


async def test_a_message_whose_worker_died_is_sent_once_its_lease_runs_out(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    app, _ = receiver
    _subscribe(outbox, receiver, "/after")
    [message_id] = _enqueue(outbox, sessions)
    now = datetime.now(UTC)
    # A worker claims it with a short lease, then dies before sending.
    [claim] = (
        Claims(sessions)
        .claim(now, now + timedelta(seconds=0.5), limit=10, busy={}, per_subscription=4)
        .claims
    )
    assert claim.message_id == message_id
    await workers()
    await asyncio.sleep(0.3)
    assert app.received == []
    await eventually(lambda: _status(sessions, message_id) == "delivered", within_s=3)
    assert [r.webhook_id for r in app.received] == [message_id]


async def test_a_committed_message_wakes_the_worker_at_once(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    _subscribe(outbox, receiver, "/soon")
    worker = await workers(HookSettings(poll_s=30))
    outbox.on_commit(worker.wake)
    await asyncio.sleep(0.1)  # the first look, at start, found nothing
    [message_id] = _enqueue(outbox, sessions)
    assert await eventually(lambda: _status(sessions, message_id) == "delivered") < 1.0


async def test_secrets_appear_in_no_log_and_no_metric(
    sessions: sessionmaker[Session],
    receiver: Receiver,
    workers: Workers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    outbox = Outbox(sessions, deadline_s=0.3)
    app, url = receiver
    _, ok_secret = outbox.create(url + "/ok", [], "", "tester")
    app.expect("/ok", ok_secret)
    _, down_secret = outbox.create(url + "/down", [], "", "tester")
    app.expect("/down", down_secret, Behaviour(status=500))
    metrics = Metrics()
    await workers(metrics=metrics)
    ids = _enqueue(outbox, sessions)
    await eventually(lambda: {_status(sessions, i) for i in ids} == {"delivered", "dead"})
    await eventually(lambda: "is dead after" in caplog.text)
    exposed = generate_latest(metrics.registry).decode()
    for secret in (ok_secret, down_secret):
        body = secret.removeprefix("whsec_")
        assert body not in caplog.text and body not in exposed
    claim_text = repr(Claims(sessions).claim_one(ids[0], datetime.now(UTC)))
    assert ok_secret not in claim_text and down_secret not in claim_text


async def test_stopping_cancels_hanging_attempts_within_its_grace(
    outbox: Outbox, sessions: sessionmaker[Session], receiver: Receiver, workers: Workers
) -> None:
    _subscribe(outbox, receiver, "/hangs", Behaviour(hang=True))
    worker = await workers(HookSettings(poll_s=0.05, attempt_timeout_s=30))
    [message_id] = _enqueue(outbox, sessions)
    await asyncio.sleep(0.3)
    began = time.monotonic()
    await worker.stop()
    assert time.monotonic() - began < 2.0
    # Still leased: another worker sends it once the lease runs out.
    assert _status(sessions, message_id) == "pending"


async def test_the_back_off_grows_exponentially_with_full_jitter(workers: Workers) -> None:
    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    settings = HookSettings(max_backoff_s=300)
    worker = await workers(settings, rng=Highest(), backoff_base_s=1.0)
    assert [worker.backoff_s(n) for n in (1, 2, 3, 4, 9, 10, 100)] == [
        1, 2, 4, 8, 256, 300, 300,
    ]  # fmt: skip
    jittered = await workers(settings, rng=random.Random(7), backoff_base_s=1.0)
    draws = [jittered.backoff_s(5) for _ in range(200)]
    assert all(0 <= d <= 16 for d in draws) and min(draws) < 4 and max(draws) > 12


def test_fast_settings_are_valid() -> None:
    assert FAST.attempt_timeout_s < FAST.max_backoff_s * 10
