"""Every Prometheus collector of the gateway, declared once on an injected registry.

Labels stay bounded: adapter name and version come from the catalogue, never from
free client input; status is a class (2xx, 4xx, 5xx).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from sub-millisecond (gateway overhead) to long generations.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


# Classification of `model: "auto"`: tens of microseconds (rules) to tens of milliseconds.
_CLASSIFY_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


def status_class(status: int) -> str:
    """`200` → `"2xx"`."""
    return f"{status // 100}xx"


class Metrics:
    """The gateway's collectors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, per endpoint, adapter, version and status class.",
            ["endpoint", "adapter", "version", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to the last byte of the response.",
            ["endpoint", "adapter", "version", "status_class"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request received to the first streamed chunk from the engine.",
            ["endpoint", "adapter", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being served right now.",
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Engine failures seen by the gateway, per kind.",
            ["kind"],
            registry=r,
        )
        self.upstream_healthy = Gauge(
            "gateway_upstream_healthy",
            "1 when the engine replica answers its health check.",
            ["upstream"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "gateway_engine_restarts_total",
            "Times the managed engine was started again after it died.",
            registry=r,
        )
        self.adapter_loads = Counter(
            "gateway_adapter_loads_total",
            "Adapter version loads into an engine replica, per outcome (ok, error).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.adapter_load_failures = Counter(
            "gateway_adapter_load_failures_total",
            "Adapter version loads that failed, per reason (rejected by the engine, "
            "engine unreachable, files changed since registration).",
            ["upstream", "reason"],
            registry=r,
        )
        self.adapter_load_duration = Histogram(
            "gateway_adapter_load_duration_seconds",
            "Time to load one adapter version into an engine replica.",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_evictions = Counter(
            "gateway_adapter_evictions_total",
            "Adapter versions unloaded from a replica to make room (least recently used).",
            ["upstream"],
            registry=r,
        )
        self.adapters_resident = Gauge(
            "gateway_adapters_resident",
            "Adapter versions loaded in each engine replica.",
            ["upstream"],
            registry=r,
        )
        self.upstream_ejections = Counter(
            "gateway_upstream_ejections_total",
            "Engine replicas taken out of rotation, per reason (connect: refused or timed "
            "out; broken: mid-answer; failures: a burst of 5xx, timeouts or resets).",
            ["upstream", "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries_total",
            "Requests sent again to another replica because the first never reached one, "
            "per reason (connect, reset).",
            ["reason"],
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "gateway_upstream_in_flight",
            "Requests this gateway has outstanding at each engine replica.",
            ["upstream"],
            registry=r,
        )
        self.registry_operations = Counter(
            "gateway_registry_operations_total",
            "Registry changes (register, load, unload, retire, delete, pin, unpin), per outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.auth_refusals = Counter(
            "gateway_auth_refusals_total",
            "Requests refused by API-key checks, per reason.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "Requests refused with 429 because a tenant key's rate was used up.",
            ["tenant"],
            registry=r,
        )
        self.rate_limit_fallbacks = Counter(
            "gateway_rate_limit_fallbacks_total",
            "Rate-limit checks made on this process's own buckets because Redis, which "
            "shares them between replicas, could not be reached.",
            registry=r,
        )
        self.route_classify_duration = Histogram(
            "gateway_route_classify_seconds",
            "Time to classify one `auto` request (queueing for the embedder included), per "
            "method (rule, embedding, fallback).",
            ["method"],
            buckets=_CLASSIFY_BUCKETS,
            registry=r,
        )
        self.route_decisions = Counter(
            "gateway_route_decisions_total",
            "`auto` requests per route they went to and how it was decided.",
            ["route", "method"],
            registry=r,
        )
        self.route_fallbacks = Counter(
            "gateway_route_fallbacks_total",
            "`auto` requests sent to the default route, per reason (low_confidence, "
            "nearest_default, no_text, overloaded, unavailable, not_allowed).",
            ["reason"],
            registry=r,
        )
        self.route_embed_batch = Histogram(
            "gateway_route_embed_batch_size",
            "Texts embedded together in one model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.route_table_id = Gauge(
            "gateway_route_table_id",
            "The registry id of the route table in use (0: none).",
            registry=r,
        )
        self.rollout_stage = Gauge(
            "gateway_rollout_stage",
            "1 for the stage the route's current (or last) rollout is in, 0 for the others.",
            ["route", "stage"],
            registry=r,
        )
        self.rollout_weight = Gauge(
            "gateway_rollout_canary_weight_percent",
            "The candidate's share of the route's requests, in percent (0 outside canary).",
            ["route"],
            registry=r,
        )
        self.rollout_requests = Counter(
            "gateway_rollout_requests_total",
            "Requests of a route under rollout, per variant that served them (stable, canary).",
            ["route", "variant"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "gateway_shadow_requests_total",
            "Shadow copies to a rollout's candidate, per outcome (sent, dropped, completed, "
            "failed, unrecorded).",
            ["route", "outcome"],
            registry=r,
        )
        self.response_log_records = Counter(
            "gateway_response_log_records_total",
            "Answered requests for the response log, per outcome (written, dropped: the "
            "buffer was full or a failed batch did not fit back).",
            ["outcome"],
            registry=r,
        )
        self.response_log_pending = Gauge(
            "gateway_response_log_pending",
            "Response records waiting for the writer.",
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens_total",
            "Tokens of answered requests, per tenant (API key name), adapter (route or base "
            "model) and kind (prompt, completion).",
            ["tenant", "adapter", "kind"],
            registry=r,
        )
        self.feedback = Counter(
            "gateway_feedback_total",
            "Users' ratings received, per route, variant (stable, canary, none) and rating "
            "(up, down, score_1..score_5, value).",
            ["route", "variant", "rating"],
            registry=r,
        )
        self.quality_scores = Counter(
            "gateway_quality_scores_total",
            "Scores given by the verifier scorers (counted once their batch is written), per "
            "route, variant (stable, canary, shadow, paired, none: not aggregated), scorer and "
            "result (pass, fail, value: no verdict).",
            ["route", "variant", "scorer", "result"],
            registry=r,
        )
        # A Counter, so that rate() survives restarts; it cannot go down, so paired
        # differences (negative when the candidate does worse) are left out: their mean is
        # the rollout's `paired` aggregate in the registry.
        self.quality_score_value_sum = Counter(
            "gateway_quality_score_value_sum",
            "Sum of the values of the scores counted in gateway_quality_scores_total (for a "
            "mean), but the paired variant's differences.",
            ["route", "variant", "scorer"],
            registry=r,
        )
        self.quality_queue_depth = Gauge(
            "gateway_quality_queue_depth",
            "Scoring jobs waiting, per kind of scorer (verifier).",
            ["kind"],
            registry=r,
        )
        self.quality_dropped = Counter(
            "gateway_quality_dropped_total",
            "Scoring jobs dropped, per kind of scorer (verifier): the queue was full, their "
            "batch could not be stored, or they were still queued at shutdown.",
            ["kind"],
            registry=r,
        )
        self.quality_scorer_errors = Counter(
            "gateway_quality_scorer_errors_total",
            "Answers a scorer failed on (a bug in the scorer: its score is skipped).",
            ["scorer"],
            registry=r,
        )
        self.quality_judge = Counter(
            "gateway_quality_judge_total",
            "LLM judge gradings, per route, scorer and outcome (scored, agreed, disagreed: the "
            "two orders of a pair differ, unparseable, error, dropped).",
            ["route", "scorer", "outcome"],
            registry=r,
        )
        self._analysis(r)
        self._hooks(r)

    def forget_upstream(self, url: str) -> None:
        """Drop the series of a replica that left the pool (discovery no longer lists it)."""
        for gauge in (self.upstream_healthy, self.adapters_resident, self.upstream_in_flight):
            with contextlib.suppress(KeyError):
                gauge.remove(url)

    def _analysis(self, r: CollectorRegistry) -> None:
        self.analysis_verdicts = Counter(
            "gateway_analysis_verdicts_total",
            "Rollout verdicts recorded, per route and outcome (pass, fail, wait, inconclusive).",
            ["route", "outcome"],
            registry=r,
        )
        self.analysis_signals = Counter(
            "gateway_analysis_signal_verdicts_total",
            "Signal verdicts recorded, per route, signal and decision (pass, fail, wait).",
            ["route", "signal", "decision"],
            registry=r,
        )
        self.analysis_actions = Counter(
            "gateway_analysis_actions_total",
            "Automatic actions, per route, action (advance, promote, rollback, pause) and "
            "result (done; dry_run: recorded only; overtaken: an operator moved the rollout "
            "first; failed).",
            ["route", "action", "result"],
            registry=r,
        )
        self.analysis_look_seconds = Histogram(
            "gateway_analysis_look_duration_seconds",
            "Time one look takes over every active rollout (reads, tests, verdicts, actions).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.analysis_last_look = Gauge(
            "gateway_analysis_last_look_timestamp_seconds",
            "When this replica last looked at the active rollouts (as the leader).",
            registry=r,
        )
        self.analysis_leader = Gauge(
            "gateway_analysis_leader",
            "1 while this replica leads the rollout analysis.",
            registry=r,
        )
        self.analysis_alarms = Counter(
            "gateway_analysis_alarms_total",
            "Reward-hacking alarms raised, per route.",
            ["route"],
            registry=r,
        )
        self.analysis_alarm = Gauge(
            "gateway_analysis_alarm",
            "1 while a route's rollout has its reward-hacking alarm raised.",
            ["route"],
            registry=r,
        )

    def _hooks(self, r: CollectorRegistry) -> None:
        self.hook_deliveries = Counter(
            "gateway_hook_deliveries_total",
            "Webhook messages finished, per event type and result (delivered, dead: its "
            "deadline passed undelivered).",
            ["event", "result"],
            registry=r,
        )
        self.hook_attempts = Counter(
            "gateway_hook_attempts_total",
            "Webhook delivery attempts, per result (ok, retry: it failed and is tried again, "
            "failed: it failed for good).",
            ["result"],
            registry=r,
        )
        self.hook_attempt_seconds = Histogram(
            "gateway_hook_attempt_duration_seconds",
            "Time a webhook delivery attempt took, answered or not.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hook_delivery_seconds = Histogram(
            "gateway_hook_delivery_seconds",
            "Time from a webhook message's creation to its delivery.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hook_pending = Gauge(
            "gateway_hook_pending",
            "Webhook messages waiting for delivery.",
            registry=r,
        )
        self.hook_dead = Gauge(
            "gateway_hook_dead",
            "Webhook messages that were never delivered before their deadline.",
            registry=r,
        )
