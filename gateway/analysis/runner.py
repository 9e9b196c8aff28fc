"""The analysis loop: the leader looks at every active rollout once a second and acts.

Each look, per active rollout whose route has SLOs:

1. read its data (quality aggregates, requests and 5xx per variant, new answers' latencies)
   and its stored state;
2. compute the verdict (`gateway.analysis.look`);
3. store the new state, and the verdict when it says something new (an outcome or a signal
   decision changed, an action is due) or a minute passed since the last one kept;
4. act on it: pass -> advance (promote after the last step), fail -> `on_fail` (rollback or
   pause), inconclusive -> `on_inconclusive`. Nothing is done in a dry run, while the
   rollout is paused (an operator holds it), or when the rollout moved since the look (the
   command names the rollout, stage and step it was decided on: an operator who came first
   wins). An action is an audit event whose detail names the verdict.

A rollback or pause takes the candidate out of this replica's live view in the command
itself; the other replicas follow at the registry change (milliseconds on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.analysis.evaluate import Verdict
from gateway.analysis.leader import Leadership
from gateway.analysis.look import LATENCY_KINDS, Data, Position, look
from gateway.analysis.slo import RouteSlo
from gateway.analysis.slos import SloConfigs
from gateway.background.tasks import cancel_and_wait
from gateway.config import AnalysisSettings
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.registry.analysis import AnalysisStore
from gateway.registry.quality import QualityStore
from gateway.registry.schema import RolloutRow, RolloutStage, VerdictRow
from gateway.rollout.machine import Command, gate
from gateway.rollout.manager import RolloutManager
from gateway.rollout.plan import RolloutPlan

log = logging.getLogger(__name__)
ACTOR = "analysis"
Phase = Literal["Successful", "Failed", "Inconclusive", "Running"]
# A verdict that says nothing new is still kept this often (the history's heartbeat).
HEARTBEAT_S = 60.0


@dataclass(frozen=True)
class LookResult:
    """What one look at one rollout concluded and did."""

    rollout_id: int
    route: str
    verdict: Verdict
    action: str
    acted: bool
    verdict_id: int | None


class AnalysisRunner:
    """Runs the looks on the leader."""

    def __init__(
        self,
        store: AnalysisStore,
        quality: QualityStore,
        rollouts: RolloutManager,
        slos: SloConfigs,
        leadership: Leadership,
        metrics: Metrics,
        settings: AnalysisSettings,
        identity: str,
    ) -> None:
        self._store = store
        self._quality = quality
        self._rollouts = rollouts
        self._slos = slos
        self._leadership = leadership
        self._metrics = metrics
        self._settings = settings
        self.identity = identity
        self._task: asyncio.Task[None] | None = None
        self._alarmed: set[str] = set()

    async def start(self) -> None:
        """Start looking (when enabled)."""
        if self._settings.enabled:
            self._task = asyncio.create_task(self._loop(), name="rollout-analysis")

    async def stop(self) -> None:
        """Stop looking and give up leading."""
        await cancel_and_wait(self._task)
        self._task = None
        await self._leadership.release()
        self._metrics.analysis_leader.set(0)

    @property
    def leading(self) -> bool:
        """Whether this replica leads the analysis now."""
        return self._leadership.leading

    async def _loop(self) -> None:
        while True:
            try:
                if await self._leadership.hold():
                    self._metrics.analysis_leader.set(1)
                    await self.look_all()
                else:
                    self._metrics.analysis_leader.set(0)
            except Exception:
                log.exception("the rollout analysis failed; it looks again at the next tick")
            await asyncio.sleep(self._settings.interval_s)

    async def look_all(self) -> list[LookResult]:
        """Look at every active rollout whose route has SLOs (the leader's tick)."""
        started = time.perf_counter()
        results = []
        rows = await self._rollouts.active_rows()
        # An ended rollout's alarm is over.
        for route in self._alarmed - {row.route for row in rows}:
            self._metrics.analysis_alarm.labels(route).set(0)
            self._alarmed.discard(route)
        for row in rows:
            slo = self._slos.for_route(row.route)
            if slo is None:
                continue
            try:
                results.append(await self.look_at(row, slo))
            except Exception:
                log.exception("looking at rollout %s of %s failed", row.id, row.route)
        self._metrics.analysis_look_seconds.observe(time.perf_counter() - started)
        self._metrics.analysis_last_look.set(time.time())
        return results

    async def look_at(self, row: RolloutRow, slo: RouteSlo) -> LookResult:
        """One look at one rollout: verdict, record, action."""
        now = datetime.now(UTC)
        state, _ = await asyncio.to_thread(self._store.state, row.id)
        if state.get("stage") != [row.stage.value, row.step]:
            # A new step: the step's own verdict history starts (the tests carry on).
            state["stage"] = [row.stage.value, row.step]
        data = await self._data(row, slo, state)
        plan = RolloutPlan.model_validate(row.plan)
        samples = await self._rollouts.samples(row.id)
        position = Position(
            stage=row.stage.value,
            step=row.step,
            minimums_met=not gate(row, plan, samples, now),
            step_elapsed_s=(now - row.step_started_at).total_seconds(),
        )
        verdict, state = look(slo, position, data, state)
        action = self._action(verdict, row, plan, slo)
        dry_run = slo.analysis.dry_run
        record, news = self._worth_keeping(state, verdict, action, now)
        kept = None
        if record:
            kept = VerdictRow(
                rollout_id=row.id,
                stage=row.stage.value,
                step=row.step,
                outcome=verdict.outcome,
                action=action,
                acted=False,
                dry_run=dry_run,
                reason=verdict.reason[:1024],
                signals=[_jsonable(s.to_dict()) for s in verdict.signals],
                leader=self.identity,
            )
        kept = await asyncio.to_thread(self._store.save, row.id, state, kept, announce=news)
        verdict_id = kept.id if kept is not None else None
        if kept is not None:
            self._count(row.route, verdict)
        acted = False
        if action != "none" and kept is not None:
            acted = await self._act(row, action, verdict, kept, dry_run)
        await self._alarm(row, slo, verdict, state, verdict_id, acted)
        return LookResult(row.id, row.route, verdict, action, acted, verdict_id)

    async def _alarm(
        self,
        row: RolloutRow,
        slo: RouteSlo,
        verdict: Verdict,
        state: dict[str, Any],
        verdict_id: int | None,
        acted: bool,
    ) -> None:
        """Raise the reward-hacking alarm once per rollout: an audit event with its webhook,
        the metric, and a pause when the SLO asks for one."""
        self._metrics.analysis_alarm.labels(row.route).set(1 if verdict.alarm else 0)
        if verdict.alarm is not None:
            self._alarmed.add(row.route)
        if verdict.alarm is None or state.get("alarm_raised"):
            return
        state["alarm_raised"] = True
        await asyncio.to_thread(self._store.update_state, row.id, state)
        self._metrics.analysis_alarms.labels(row.route).inc()
        detail = {"verdict": verdict_id, "alarm": verdict.alarm}
        await self._rollouts.note(
            row.id, "alarm", actor=ACTOR, reason=f"reward hacking? {verdict.alarm}", detail=detail
        )
        log.warning("rollout %s of %s: reward-hacking alarm: %s", row.id, row.route, verdict.alarm)
        if slo.analysis.on_alarm == "pause" and not row.paused and not acted:
            if slo.analysis.dry_run:
                return
            try:
                await self._rollouts.command(
                    row.route,
                    Command.PAUSE,
                    actor=ACTOR,
                    reason=f"reward-hacking alarm: {verdict.alarm}"[:1024],
                    expect=(row.id, row.stage, row.step, row.paused),
                    detail=detail,
                )
            except GatewayError as exc:
                log.warning("rollout %s: the alarm's pause was not done: %s", row.id, exc.message)

    async def _data(self, row: RolloutRow, slo: RouteSlo, state: dict[str, Any]) -> Data:
        aggregates = await asyncio.to_thread(self._quality.aggregates, row.id)
        requests = await asyncio.to_thread(self._store.requests, row.id)
        data = Data(aggregates, requests)
        if any(s.signal in LATENCY_KINDS for s in slo.signals):
            after = int(state.get("latency_after", 0))
            data.latencies, state["latency_after"] = await asyncio.to_thread(
                self._store.latencies, row.id, after
            )
        return data

    @staticmethod
    def _action(verdict: Verdict, row: RolloutRow, plan: RolloutPlan, slo: RouteSlo) -> str:
        if row.paused:
            return "none"
        if verdict.outcome == "fail":
            return slo.analysis.on_fail
        if verdict.outcome == "inconclusive":
            return slo.analysis.on_inconclusive
        if verdict.outcome == "pass":
            last = row.stage == RolloutStage.CANARY and row.step >= len(plan.canary) - 1
            return "promote" if last else "advance"
        return "none"

    @staticmethod
    def _worth_keeping(
        state: dict[str, Any], verdict: Verdict, action: str, now: datetime
    ) -> tuple[bool, bool]:
        """(keep the verdict, it says something new: tell the webhooks)."""
        decisions = [(s.name, s.decision) for s in verdict.signals]
        said = json.dumps([state.get("stage"), verdict.outcome, action, decisions, verdict.alarm])
        digest = hashlib.sha256(said.encode()).hexdigest()[:16]
        last = state.get("kept", {})
        stale = now.timestamp() - float(last.get("at", 0)) >= HEARTBEAT_S
        news = digest != last.get("digest")
        if action == "none" and not news and not stale:
            return False, False
        state["kept"] = {"digest": digest, "at": now.timestamp()}
        return True, news

    async def _act(
        self, row: RolloutRow, action: str, verdict: Verdict, kept: VerdictRow, dry_run: bool
    ) -> bool:
        if dry_run:
            self._metrics.analysis_actions.labels(row.route, action, "dry_run").inc()
            await asyncio.to_thread(self._store.mark_acted, kept.id, False, "dry run: not done")
            return False
        try:
            await self._rollouts.command(
                row.route,
                Command(action),
                actor=ACTOR,
                reason=f"verdict {kept.id}: {verdict.outcome}: {verdict.reason}"[:1024],
                expect=(row.id, row.stage, row.step, row.paused),
                detail={"verdict": kept.id, "outcome": verdict.outcome},
            )
        except GatewayError as exc:
            result = "overtaken" if exc.status_code == 409 else "failed"
            self._metrics.analysis_actions.labels(row.route, action, result).inc()
            await asyncio.to_thread(
                self._store.mark_acted, kept.id, False, f"not done: {exc.message}"
            )
            log.warning("rollout %s: %s not done: %s", row.id, action, exc.message)
            return False
        self._metrics.analysis_actions.labels(row.route, action, "done").inc()
        await asyncio.to_thread(self._store.mark_acted, kept.id, True, "")
        log.info(
            "rollout %s of %s: %s (verdict %s: %s)",
            row.id,
            row.route,
            action,
            kept.id,
            verdict.reason,
        )
        return True

    async def latest_verdict(self, rollout_id: int) -> VerdictRow | None:
        """A rollout's newest verdict."""
        return await asyncio.to_thread(self._store.latest, rollout_id)

    async def verdicts(self, rollout_id: int, limit: int) -> Sequence[VerdictRow]:
        """A rollout's verdicts, newest first."""
        return await asyncio.to_thread(self._store.verdicts, rollout_id, limit)

    def _count(self, route: str, verdict: Verdict) -> None:
        self._metrics.analysis_verdicts.labels(route, verdict.outcome).inc()
        for s in verdict.signals:
            self._metrics.analysis_signals.labels(route, s.name, s.decision).inc()


def phase_of(stage: str, outcome: str | None) -> Phase:
    """How a rollout controller's web metric reads a rollout: ended rollouts by their end,
    active ones by their newest verdict."""
    if stage == RolloutStage.PROMOTED:
        return "Successful"
    if stage in (RolloutStage.ROLLED_BACK, RolloutStage.ABORTED) or outcome == "fail":
        return "Failed"
    if outcome == "pass":
        return "Successful"
    if outcome == "inconclusive":
        return "Inconclusive"
    return "Running"


def _jsonable(value: Any) -> Any:
    """Verdict details as JSON: infinities and NaNs as strings."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
