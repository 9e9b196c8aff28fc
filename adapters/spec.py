"""The pipeline's spec file: one YAML document that says what to train, on what, how to judge
it and how to roll it out.

Every problem is reported at once, each with the file and line it is on
(`spec.yaml:14: training.learning_rate: must be greater than 0`). Paths in the spec are
relative to the spec file's directory. The task's verifiers are the gateway's own verifier
specs (`gateway.quality.verifiers`), so what gates an adapter here is what scores it there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.train import BASE_MODEL_ID, TrainConfig
from gateway.documents.checking import describe, repeated_keys
from gateway.quality.verifiers import VerifierSpec

METRICS: Final = (
    "exact_match",
    "json_valid",
    "schema_pass",
    "verifier_pass",
    "chrf",
    "sql_execution",
    "contains",
)
Metric = Literal[
    "exact_match", "json_valid", "schema_pass", "verifier_pass", "chrf", "sql_execution", "contains"
]
ADAPTER_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
Projection = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_VERIFIER_KINDS: Final = (
    "json",
    "json_schema",
    "regex",
    "length",
    "refusal",
    "language",
    "caps_share",
    "sql",
)


class SpecError(ValueError):
    """A spec (or a dataset it names) is wrong: every problem, each as `file:line: text`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelSpec(_Strict):
    """The base model: its hub id (what the gateway serves) and, optionally, a local copy."""

    id: str = BASE_MODEL_ID
    # A local Hugging Face directory; default: the gateway's prepared embedded model.
    path: str | None = None


class DataSpec(_Strict):
    """Training data: JSONL files of chat `messages` or `prompt`/`completion` rows."""

    train: list[str] = Field(min_length=1, max_length=64)
    # Replayed general data mixed into training, against forgetting (optional).
    replay: list[str] = Field(default_factory=list, max_length=64)


class LoraSpec(_Strict):
    """LoRA settings, as peft takes them."""

    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1, le=4096)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[Projection] = Field(
        default_factory=lambda: list(get_args(Projection)), min_length=1
    )
    # LoRA on the base model's last `top_layers` layers only (all when unset): the backward
    # pass then stops below them, so a step costs less (on SmolLM2's 30 layers, 15 of them:
    # about three quarters), at the price of what the lower layers could have learned.
    top_layers: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _unique(self) -> LoraSpec:
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("target_modules names a module twice")
        return self


class TrainingSpec(_Strict):
    """How long and how hard to train: `steps`, or `epochs` over the training rows."""

    steps: int | None = Field(default=None, ge=1, le=100_000)
    epochs: float | None = Field(default=None, gt=0.0, le=1000.0)
    learning_rate: float = Field(default=2e-3, gt=0.0, le=1.0)
    batch_size: int = Field(default=8, ge=1, le=512)
    warmup_steps: int = Field(default=2, ge=0)
    max_length: int = Field(default=256, ge=16, le=8192)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


class HeldOutSpec(_Strict):
    """The held-out split: a file of its own, or a seeded share of the training rows."""

    path: str | None = None
    share: float | None = Field(default=None, gt=0.0, le=0.5)

    @model_validator(mode="after")
    def _one_source(self) -> HeldOutSpec:
        if (self.path is None) == (self.share is None):
            raise ValueError("give the held-out set's path or a share of the training rows")
        return self


class EvaluationSpec(_Strict):
    """The sets an adapter is judged on; every row's completion is its reference answer."""

    held_out: HeldOutSpec
    golden: str | None = None
    slices: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")], str] = Field(
        default_factory=dict, max_length=32
    )
    # General-ability questions (metric `contains`: the reference appears in the answer).
    general: str | None = None
    max_tokens: int = Field(default=128, ge=1, le=4096)
    # Word n-grams shared with a training row that make an evaluation row contaminated.
    ngram: int = Field(default=8, ge=3, le=50)


_DEFAULT_METRICS: list[Metric] = ["exact_match", "verifier_pass"]


class TaskSpec(_Strict):
    """What a good answer is: the metrics to compute and the gateway verifiers to apply."""

    description: str = ""
    metrics: list[Metric] = Field(default_factory=lambda: _DEFAULT_METRICS.copy())
    verifiers: list[VerifierSpec] = Field(default_factory=list, max_length=32)
    # SQL run by `sql_execution` to build the database answers are executed against.
    sql_fixture: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> TaskSpec:
        if "sql_execution" in self.metrics and self.sql_fixture is None:
            raise ValueError("metric sql_execution needs sql_fixture (a .sql file)")
        if "schema_pass" in self.metrics and not any(
            v.kind == "json_schema" for v in self.verifiers
        ):
            raise ValueError("metric schema_pass needs a json_schema verifier")
        return self


GateKey = Annotated[str, Field(pattern=r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)?)\.[a-z0-9_]+$")]


class GatesSpec(_Strict):
    """What the new adapter must reach before it is registered."""

    # `<set>.<metric>` (held_out.exact_match, golden.verifier_pass, slices.dates.exact_match,
    # or `*.<metric>` for every set): the least the new adapter may score.
    min: dict[GateKey, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    # `<metric>`: how far below the route's stable version it may score, on every task set.
    max_regression: dict[Metric, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict
    )
    # How much of the base model's general ability (metric `contains` on `general`) it may lose.
    max_general_loss: float | None = Field(default=None, ge=0.0, le=1.0)


class RolloutSpec(_Strict):
    """What `register` does after registering: start a rollout with this plan and SLO."""

    start: bool = True
    # A gateway rollout plan (the gateway's default plan when omitted).
    plan: dict[str, Any] | None = None
    # This route's entry in the gateway's SLO file (`signals`, `analysis`).
    slo: dict[str, Any] | None = None
    # Put the task's verifiers on the route in the gateway's scorer configuration.
    scorers: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class Spec(_Strict):
    """A whole spec file."""

    name: str = Field(pattern=ADAPTER_NAME.pattern)
    description: str = ""
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    data: DataSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec
    task: TaskSpec = Field(default_factory=TaskSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    # Where runs are written, relative to the spec file.
    output: str = "runs"

    @model_validator(mode="after")
    def _name_not_doubled(self) -> Spec:
        if "--" in self.name:
            raise ValueError("name must not hold '--' (the gateway's engine names use it)")
        return self

    def train_config(self, rows: int) -> TrainConfig:
        """The trainer's settings; `epochs` become steps over `rows` training rows."""
        steps = self.training.steps
        if steps is None:
            epochs = self.training.epochs if self.training.epochs is not None else 3.0
            steps = max(1, round(epochs * rows / self.training.batch_size))
        return TrainConfig(
            rank=self.lora.r,
            alpha=self.lora.alpha,
            dropout=self.lora.dropout,
            target_modules=tuple(self.lora.target_modules),
            top_layers=self.lora.top_layers,
            learning_rate=self.training.learning_rate,
            steps=steps,
            batch_size=self.training.batch_size,
            warmup_steps=self.training.warmup_steps,
            max_length=self.training.max_length,
            seed=self.training.seed,
        )


class LoadedSpec:
    """A checked spec with the file it came from (paths resolve against its directory)."""

    def __init__(self, spec: Spec, file: Path, text: str) -> None:
        self.spec = spec
        self.file = file
        self.text = text

    @property
    def root(self) -> Path:
        """The spec file's directory."""
        return self.file.parent

    def path(self, relative: str) -> Path:
        """A path the spec names, resolved against the spec's directory."""
        return (self.root / Path(relative).expanduser()).resolve()

    @property
    def output(self) -> Path:
        """Where this spec's runs go."""
        return self.path(self.spec.output) / self.spec.name

    def problem(self, field: str, text: str) -> str:
        """A problem with one field (`data.train[0]`, `lora.top_layers`), as
        `file:line: field: text`."""
        parts: list[int | str] = []
        for piece in re.split(r"\.|\[(\d+)\]", field):
            if piece:
                parts.append(int(piece) if piece.isdigit() else piece)
        tree = yaml.compose(self.text, Loader=yaml.SafeLoader)
        return f"{self.file}:{line_of(tree, parts)}: {field}: {text}"


def check_base_layers(loaded: LoadedSpec, layers: int) -> None:
    """`SpecError` when the spec puts LoRA on more layers than the base model has."""
    top = loaded.spec.lora.top_layers
    if top is not None and top > layers:
        raise SpecError(
            [loaded.problem("lora.top_layers", f"{top} > the base model's {layers} layers")]
        )


def load_spec(file: Path) -> LoadedSpec:
    """Read and check a spec file; `SpecError` lists every problem with its line."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{file}: cannot read: {exc}"]) from exc
    return LoadedSpec(parse_spec(text, str(file)), file.resolve(), text)


def parse_spec(text: str, name: str = "spec.yaml") -> Spec:
    """Check spec text; `name` is the file name the errors carry."""
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{name}:{line}: not valid YAML: {problem}"]) from exc
    if not isinstance(data, dict):
        raise SpecError([f"{name}:1: a spec is a mapping (name, data, evaluation, ...)"])
    problems = [_placed(name, tree, text) for text in repeated_keys(tree)]
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        for detail in exc.errors():
            line = line_of(tree, _path(detail["loc"]))
            for text in describe(detail, _VERIFIER_KINDS):
                # A problem with the spec as a whole has no field to name.
                problems.append(f"{name}:{line}: {text.removeprefix('config: ')}")
        raise SpecError(problems) from exc
    if problems:
        raise SpecError(problems)
    return spec


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    # The discriminated union's tag (`json_schema` after an index) is no place in the file.
    kept: list[int | str] = []
    for index, part in enumerate(loc):
        if index and isinstance(loc[index - 1], int) and part in _VERIFIER_KINDS:
            continue
        if part == "[key]":
            continue
        kept.append(part)
    return kept


def _placed(name: str, tree: Any, text: str) -> str:
    # `repeated_keys` names the line of the second key itself.
    found = re.search(r"again on line (\d+)", text)
    return f"{name}:{found[1] if found else 1}: {text.removeprefix('config: ')}"


def line_of(tree: Any, path: list[int | str]) -> int:
    """The line (1-based) of the deepest node of `path` the document has: a missing field is
    reported on the line of the mapping that lacks it."""
    node = tree
    line = node.start_mark.line + 1 if node is not None else 1
    for part in path:
        child = _child(node, part)
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def spec_paths(loaded: LoadedSpec) -> Iterator[tuple[str, Path]]:
    """Every file the spec names, with the field that names it."""
    spec = loaded.spec
    for index, item in enumerate(spec.data.train):
        yield f"data.train[{index}]", loaded.path(item)
    for index, item in enumerate(spec.data.replay):
        yield f"data.replay[{index}]", loaded.path(item)
    evaluation = spec.evaluation
    if evaluation.held_out.path is not None:
        yield "evaluation.held_out.path", loaded.path(evaluation.held_out.path)
    if evaluation.golden is not None:
        yield "evaluation.golden", loaded.path(evaluation.golden)
    for slice_name, item in evaluation.slices.items():
        yield f"evaluation.slices.{slice_name}", loaded.path(item)
    if evaluation.general is not None:
        yield "evaluation.general", loaded.path(evaluation.general)
    if spec.task.sql_fixture is not None:
        yield "task.sql_fixture", loaded.path(spec.task.sql_fixture)


def missing_files(loaded: LoadedSpec) -> list[str]:
    """A problem line for every named file that does not exist."""
    return [
        loaded.problem(field, f"no such file {path}")
        for field, path in spec_paths(loaded)
        if not path.is_file()
    ]
