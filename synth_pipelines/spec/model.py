"""Domain specs: the spec's pydantic model, and loading ``schemas/<domain>.yaml`` with precise errors.

A spec that does not validate raises :class:`SpecError` naming the file, the field path and what was
expected. How a spec's ``fields`` compile to the example model lives in ``example_schema``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.spec.text import normalize_text

FieldType = Literal["string", "number", "integer", "boolean", "array", "object"]
SpecType = Literal[
    "reasoning-memory",
    "skill-demonstration",
    "api-example",
    "code-snippet",
    "conversation",
    "test-case",
    # Executed tool-call traces: a request, real tool calls and their results, the final answer.
    "tool-use",
    # Statistical generators (docs/specs.md, Time series and events): no fields, no judges.
    "timeseries",
    "events",
]
STATISTICAL_TYPES = ("timeseries", "events")
TrainingFormat = Literal["sft", "dpo", "qa", "grpo-verifiable", "raw"]


class SpecError(ValueError):
    """A spec that does not validate. The message names the file, the field path and what was expected."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [f"invalid domain spec {self.path}:"]
        lines += [f"  - {loc or '<root>'}: {msg}" for loc, msg in problems]
        lines.append("Fix the spec and re-run; nothing downstream was generated.")
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """One field of an example, as written in the spec."""

    type: FieldType
    description: str = ""
    required: bool = True
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    min: float | None = None
    max: float | None = None
    enum: list[str | int | float] | None = None
    pattern: str | None = None
    min_items: int | None = Field(default=None, ge=0)
    max_items: int | None = Field(default=None, ge=1)
    items: FieldSpec | None = None
    properties: dict[str, FieldSpec] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.type == "array" and self.items is None:
            raise ValueError("an array field needs 'items' (the type of its elements)")
        if self.type == "object" and not self.properties:
            raise ValueError("an object field needs 'properties'")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if self.min_items is not None and self.max_items is not None and self.min_items > self.max_items:
            raise ValueError("min_items is greater than max_items")
        if self.enum is not None and len(self.enum) == 0:
            raise ValueError("enum must list at least one value")
        return self


class Constraints(_Strict):
    uniqueness: list[str] = Field(default_factory=list)


class Hints(_Strict):
    examples: list[dict[str, Any]] = Field(default_factory=list)
    style: str = ""
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)


class MatrixSpec(_Strict):
    dimensions: dict[str, list[str]] = Field(default_factory=dict)
    complexity: dict[str, float] = Field(
        default_factory=lambda: {"simple": 0.3, "medium": 0.5, "complex": 0.2}
    )

    @model_validator(mode="after")
    def _check(self) -> MatrixSpec:
        for name, values in self.dimensions.items():
            if not values:
                raise ValueError(f"dimension {name!r} lists no values")
            if len(set(values)) != len(values):
                raise ValueError(f"dimension {name!r} repeats a value")
        if not self.complexity:
            raise ValueError("complexity needs at least one level, e.g. {medium: 1.0}")
        if any(w < 0 for w in self.complexity.values()) or sum(self.complexity.values()) <= 0:
            raise ValueError("complexity weights must be non-negative and sum to more than 0")
        return self

    def combinations(self) -> list[dict[str, str]]:
        """Every combination of dimension values (dimensions in name order); [{}] without any."""
        names = sorted(self.dimensions)
        return [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(self.dimensions[n] for n in names))
        ]


class RuleSpec(_Strict):
    """A declarative rule: a DuckDB SQL boolean expression over the example's fields and its matrix
    conditions (see ``spec/rules.py``), checked before any judge. ``when`` limits it to some rows."""

    name: str = Field(min_length=1, max_length=80)
    check: str = Field(min_length=1, max_length=2000)
    when: str | None = Field(default=None, min_length=1, max_length=2000)
    message: str | None = Field(default=None, max_length=300)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.replace("-", "_").isidentifier():
            raise ValueError(f"rule name {value!r} must be a word (letters, digits, _ or -)")
        return value


class TaggedSeed(_Strict):
    """A seed problem with the matrix conditions it fits: ``conditions: {operation: delete}`` or a
    list of values (``{operation: [create, update]}``). Dimensions it does not name fit any value."""

    problem: str = Field(min_length=1)
    conditions: dict[str, str | list[str]] = Field(default_factory=dict)

    def allowed(self) -> dict[str, set[str]]:
        return {dim: {v} if isinstance(v, str) else set(v) for dim, v in self.conditions.items()}


class ValidatorSpec(_Strict):
    """A validator model and its weight in the consensus. ``model`` names a model in the provider config."""

    model: str
    weight: float = Field(default=1.0, gt=0)


# The consensus a panel that nobody calibrated must reach, and the diversity (mean pairwise cosine
# distance) a generator nobody calibrated must reach: the design's defaults.
DESIGN_CONSENSUS_THRESHOLD = 0.75
DESIGN_DIVERSITY_THRESHOLD = 0.7
# No on-topic gate unless a profile's calibration found one that helps (-1: cosine never below).
DESIGN_ON_TOPIC_THRESHOLD = -1.0
# The cross-field agreement gate (MiniLM, so the same for every panel): the kappa-maximizing
# threshold on the six domains of tests/data/judge_bench, 0.335-0.343 in every leave-one-domain-out
# fold (make bench-judges, docs: Quality gates).
DESIGN_FIELD_AGREEMENT_THRESHOLD = 0.34


class ValidationSpec(_Strict):
    # ``auto``: the calibrated threshold of the provider profile's validator panel (or the design's
    # 0.75 for a panel never calibrated); a number overrides it. Resolved when ``domain_schema``
    # snapshots the spec, so every later asset sees a number (``threshold``).
    consensus_threshold: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    min_pass_rate: float = Field(default=0.85, ge=0, le=1)
    # ``auto``: what the provider profile's calibration says its generator reaches (0.7 when
    # nobody calibrated it); a number overrides it. Resolved with the consensus threshold.
    diversity_threshold: Annotated[float, Field(ge=0, le=2)] | Literal["auto"] = "auto"
    # The cosine similarity (MiniLM) an example's text must reach with the problem it was written
    # for, checked before any judge. ``auto``: the profile's calibrated value (off when none).
    on_topic_threshold: Annotated[float, Field(ge=-1, le=1)] | Literal["auto"] = "auto"
    # The lowest cosine similarity (MiniLM) allowed between two text fields of one example (a fix
    # and the cause it fixes, a label's rationale and the message): below it the fields do not
    # talk about the same thing. Checked before any judge; -1 turns it off. ``auto``: the profile's
    # calibrated value, else the design default measured on the judge benchmark.
    field_agreement_threshold: Annotated[float, Field(ge=-1, le=1)] | Literal["auto"] = "auto"
    # Estimated Jaccard similarity of word 3-grams at which two accepted examples are near duplicates.
    near_duplicate_threshold: float = Field(default=0.8, gt=0, le=1)
    # Cosine similarity (MiniLM) at which a new example duplicates one the domain accepted in an
    # earlier run (its memory); null turns the memory check off.
    memory_duplicate_threshold: float | None = Field(default=0.95, gt=0, le=1)
    # Cosine similarity at which two examples' embeddings fall in one semantic cluster.
    cluster_threshold: float = Field(default=0.85, gt=0, le=1)
    criteria: list[str] = Field(default_factory=lambda: ["coherence", "accuracy", "relevance"], min_length=1)
    validators: list[ValidatorSpec] = Field(default_factory=list)
    # Whether the validator panel judges the examples the rules pass. ``auto``: yes, unless the
    # provider profile's calibration shows the panel adds no agreement with hand labels (then the
    # judges are skipped and said so); a number for consensus_threshold means ``on``.
    panel: Literal["auto", "on", "off"] = "auto"
    # The agreement (Cohen's kappa) of the gate with the domain's review labels below which the
    # review_agreement check warns; 0.2 is where "fair" agreement starts on the usual scale.
    min_review_kappa: float = Field(default=0.2, ge=-1, le=1)

    @property
    def judges_run(self) -> bool:
        """Whether the panel is called (an unresolved ``auto`` counts as on)."""
        return self.panel != "off"

    @property
    def threshold(self) -> float:
        """The consensus an example needs. Only a resolved spec has one (see ``with_panel``)."""
        if isinstance(self.consensus_threshold, str):
            raise ValueError(
                "consensus_threshold is 'auto' and was not resolved against a validator panel "
                "(DomainSpec.with_panel)"
            )
        return float(self.consensus_threshold)

    @property
    def min_on_topic(self) -> float:
        """The problem-to-example similarity an example must reach. Only a resolved spec has one."""
        if isinstance(self.on_topic_threshold, str):
            raise ValueError("on_topic_threshold is 'auto' and was not resolved (DomainSpec.with_panel)")
        return float(self.on_topic_threshold)

    @property
    def min_field_agreement(self) -> float:
        """The cross-field similarity an example must reach. Only a resolved spec has one."""
        if isinstance(self.field_agreement_threshold, str):
            raise ValueError(
                "field_agreement_threshold is 'auto' and was not resolved (DomainSpec.with_panel)"
            )
        return float(self.field_agreement_threshold)

    @property
    def min_diversity(self) -> float:
        """The diversity the domain's embeddings must reach. Only a resolved spec has one."""
        if isinstance(self.diversity_threshold, str):
            raise ValueError("diversity_threshold is 'auto' and was not resolved (DomainSpec.with_panel)")
        return float(self.diversity_threshold)


class ProgramSpec(_Strict):
    """The domain's DSPy program: the spec's own signature (``inputs`` -> ``outputs``), or a user's
    ``dspy.Module`` in a Python file (``module``, relative to the spec's folder), whose fields are
    mapped to the domain's by name (then ``inputs``/``outputs`` may be left out)."""

    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    module: str | None = Field(default=None, description="path/to/program.py with a dspy.Module subclass")
    module_class: str | None = Field(default=None, description="the class to use (default: the first)")
    metric: Literal["semantic_similarity", "exact_match", "llm_judge"] = "semantic_similarity"
    optimizer: Literal["labeled_few_shot", "bootstrap_few_shot", "miprov2"] = "labeled_few_shot"
    train_fraction: float = Field(default=0.7, gt=0, lt=1)
    max_demos: int = Field(default=3, ge=0, le=16)
    # Held-out examples scored, sampled per matrix cell: the score's 95% interval is reported, and
    # 300 keeps it within a few points whatever the domain's size.
    eval_sample: int = Field(default=300, ge=1, le=100_000)
    # Train examples handed to the optimizer (few-shot demos are picked from these).
    train_sample: int = Field(default=500, ge=1, le=100_000)

    @model_validator(mode="after")
    def _fields_or_module(self) -> ProgramSpec:
        if self.module is None and not (self.inputs and self.outputs):
            raise ValueError("program needs inputs and outputs (field names), or module: path/to/program.py")
        if self.module is not None and not self.module.endswith(".py"):
            raise ValueError(f"program.module must be a .py file, got {self.module!r}")
        return self

    def module_file(self, specs_dir: str | Path) -> Path:
        """The program file, resolved and confined to ``specs_dir``: a spec runs code only from its
        own folder (a symlink pointing out of it is refused too)."""
        if self.module is None:
            raise ValueError("the spec's program names no module")
        root, path = resolved = resolve_in_specs_folder(specs_dir, self.module)
        if not resolved.inside:
            raise ValueError(
                f"program.module {self.module!r} resolves to {path}, outside the specs folder {root}"
            )
        return path


class FeedbackSpec(_Strict):
    """When agents' success on this domain falls, regenerate it (see ``agent_performance_sensor``)."""

    success_threshold: float = Field(default=0.70, ge=0, le=1)
    # Hysteresis: after a regeneration the domain re-arms only once success recovers above this.
    recover_threshold: float = Field(default=0.80, ge=0, le=1)
    min_outcomes: int = Field(default=10, ge=1)
    min_cell_outcomes: int = Field(default=3, ge=1)
    window_hours: float = Field(default=168.0, gt=0)
    cooldown_minutes: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> FeedbackSpec:
        if self.recover_threshold < self.success_threshold:
            raise ValueError("recover_threshold must be >= success_threshold")
        return self


class VerificationSpec(_Strict):
    """For ``grpo-verifiable`` exports: the arithmetic in ``expression_field`` must equal ``answer_field``."""

    answer_field: str
    expression_field: str
    tolerance: float = Field(default=1e-6, ge=0)
    timeout_s: float = Field(default=5.0, gt=0)


class Privacy(_Strict):
    no_pii: bool = False


class SeedSource(_Strict):
    """Seeds grounded in the user's documents (docs/specs.md, Corpus-grounded seeds)."""

    # A folder, file or fsspec URL of Parquet, CSV, JSONL, Markdown or text; relative paths are
    # relative to the working directory.
    corpus: str = Field(min_length=1)
    strategy: Literal["diverse", "recent", "entity_rich", "by_field"] = "diverse"
    sample_size: int = Field(default=8, ge=1, le=10_000)
    chunk_chars: int = Field(default=800, ge=100, le=20_000)
    # by_field: the column whose values are sampled evenly; recent: a time column of the tables
    # (default: the files' modification times).
    field: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _field_for_by_field(self) -> SeedSource:
        if self.strategy == "by_field" and not self.field:
            raise ValueError("strategy by_field needs field: the column whose values to sample evenly")
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """'15min', '1h', '7d' -> seconds (a ValueError naming the accepted units otherwise)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (s, min, h, d, w), e.g. '1h'"
        )
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _as_utc(value: datetime) -> datetime:
    """A naive ``start`` is UTC (the templates say so), never the machine's local time: the same
    spec gives the same timestamps in every time zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class SeasonSpec(_Strict):
    period: int = Field(ge=2, le=100_000, description="in steps")
    amplitude: float = Field(gt=0)


class TimeseriesSpec(_Strict):
    """Series = level + trend x step + seasonal sines + noise (Gaussian or AR(1)), with regime
    changes (level shifts at random steps) and anomalies (spikes of ``anomaly_scale`` noise stds)."""

    start: UtcDatetime = datetime(2026, 1, 1, tzinfo=UTC)
    frequency: str = "1h"
    length: int = Field(default=720, ge=10, le=1_000_000)
    series: int = Field(default=4, ge=1, le=10_000)
    level: float = 100.0
    trend: float = 0.0  # per step
    seasonality: list[SeasonSpec] = Field(default_factory=list, max_length=5)
    noise: float = Field(default=1.0, ge=0)
    ar: float = Field(default=0.0, ge=-0.99, le=0.99)  # AR(1) coefficient of the noise
    regime_changes: int = Field(default=0, ge=0, le=100)
    regime_shift: float = Field(default=0.0, ge=0)
    anomalies: float = Field(default=0.0, ge=0, le=0.2)  # share of steps
    anomaly_scale: float = Field(default=5.0, gt=0)
    seed: int = 0

    @field_validator("frequency")
    @classmethod
    def _frequency(cls, value: str) -> str:
        duration_seconds(value)
        return value


class AttributeSpec(_Strict):
    """A typed attribute of every event."""

    type: Literal["category", "float", "integer"]
    values: list[str] = Field(default_factory=list, max_length=1000)  # category
    weights: list[float] | None = None  # category; default uniform
    distribution: Literal["normal", "lognormal", "uniform", "poisson"] = "normal"  # float / integer
    mean: float = 0.0
    std: float = Field(default=1.0, ge=0)
    low: float = 0.0
    high: float = 1.0

    @model_validator(mode="after")
    def _consistent(self) -> AttributeSpec:
        if self.type == "category" and not self.values:
            raise ValueError("a category attribute needs values")
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError("weights must have one number per value")
        return self


class EventsSpec(_Strict):
    """Arrivals per stream: a Poisson process at ``rate`` per hour, or a Hawkes process (baseline
    ``rate``, each event adding ``hawkes_alpha`` expected children decaying at ``hawkes_beta`` per
    hour; long-run rate = rate / (1 - alpha)); every event gets the typed ``attributes``."""

    start: UtcDatetime = datetime(2026, 1, 1, tzinfo=UTC)
    duration: str = "7d"
    process: Literal["poisson", "hawkes"] = "poisson"
    rate: float = Field(default=10.0, gt=0)  # events per hour (Hawkes: the baseline)
    hawkes_alpha: float = Field(default=0.5, ge=0, lt=1)
    hawkes_beta: float = Field(default=2.0, gt=0)
    streams: int = Field(default=1, ge=1, le=10_000)
    attributes: dict[str, AttributeSpec] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value


ScenarioFactor = Literal["time", "resources", "stakeholders", "constraints"]
# The extra criterion the judges score adversarial rows on, next to the spec's criteria.
ADVERSARIAL_CRITERION = "hard_but_well_posed"


class TechniquesSpec(_Strict):
    """How problems beyond the seeds are made, planned by ``problem_matrix`` (docs/specs.md, Techniques)."""

    # Rewrites of each seed for a cell's complexity level, keeping its core concept; each cell's
    # (non-adversarial) target is shared between the seed and its variations.
    variations: int = Field(default=0, ge=0, le=5)
    # Share of the domain's target given to adversarial problems: harder versions that challenge an
    # assumption or probe an edge case, judged with the extra criterion ``hard_but_well_posed``.
    adversarial: float = Field(default=0.0, ge=0, le=0.5)
    # Named capabilities or edge cases adversarial problems aim at, in turn (none: the model picks).
    capabilities: list[Annotated[str, Field(min_length=2, max_length=80)]] = Field(
        default_factory=list, max_length=20
    )
    # The seed scenario grown along each factor, one variant per factor.
    scenario_expansion: list[ScenarioFactor] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.variations or self.adversarial or self.scenario_expansion)


class SpecsFolderPath(NamedTuple):
    """A path a spec names, resolved against its specs folder (symlinks followed)."""

    root: Path
    path: Path

    @property
    def inside(self) -> bool:
        return self.path.is_relative_to(self.root)


def resolve_in_specs_folder(specs_dir: str | Path, relative: str | Path) -> SpecsFolderPath:
    """Where ``relative`` really points from ``specs_dir``. Every file a spec makes this project
    read or run (a program module, a tool, an MCP server script, an eval set) goes through here,
    and its user refuses the path unless ``inside``: a symlink out of the folder is refused too."""
    root = Path(specs_dir).resolve()
    return SpecsFolderPath(root, (root / relative).resolve())


def _inside_specs_folder(path: str, key: str) -> str:
    """A spec reads and runs files only from its own folder: a relative path that stays inside it
    (symlinks are resolved again when the file is used)."""
    parts = Path(path.replace("\\", "/")).parts
    if Path(path).is_absolute() or path.startswith(("/", "\\", "~")) or ".." in parts:
        raise ValueError(
            f"{key} must be a path inside the specs folder (no absolute path, '~' or '..'), got {path!r}"
        )
    return path


class McpToolSource(_Strict):
    """A tool served by an MCP server (``tools/call`` over stdio): this project's own ``synth mcp``
    (``server: synth``) or a Python script inside the specs folder."""

    server: str = Field(min_length=1, max_length=500)
    tool: str | None = Field(
        default=None, max_length=128, description="the server's name for it (default: name)"
    )

    @field_validator("server")
    @classmethod
    def _server_inside_specs(cls, server: str) -> str:
        return server if server == "synth" else _inside_specs_folder(server, "tools[].mcp.server")


class ToolSpec(_Strict):
    """A tool the generator may call in a ``tool-use`` domain: a Python function in a file inside the
    specs folder, run for real in a resource-limited subprocess for every call, or a tool of an MCP
    server (``mcp``), called for real over the protocol."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    description: str = Field(min_length=1, max_length=500)
    # JSON schema of the arguments object (validated before the tool runs).
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    module: str | None = Field(default=None, min_length=1, max_length=500)
    function: str = Field(default="run", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    mcp: McpToolSource | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    memory_mb: int = Field(default=256, ge=32, le=4096)

    @field_validator("module")
    @classmethod
    def _module_inside_specs(cls, module: str | None) -> str | None:
        return None if module is None else _inside_specs_folder(module, "tools[].module")

    @model_validator(mode="after")
    def _one_source(self) -> ToolSpec:
        if (self.module is None) == (self.mcp is None):
            raise ValueError(
                f"tools[{self.name}]: give exactly one of module (a Python file) or mcp (a server)"
            )
        return self

    @field_validator("parameters")
    @classmethod
    def _parameters_schema(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        if parameters.get("type") != "object":
            raise ValueError("tools[].parameters must be a JSON schema of type object")
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as e:
            raise ValueError(f"tools[].parameters is not a valid JSON schema: {e.message}") from None
        return parameters


TOOL_USE_FIELDS: dict[str, Any] = {
    "request": {
        "type": "string",
        "description": "what the user asks, needing the tools",
        "min_length": 10,
        "max_length": 300,
    },
    "tool_calls": {
        "type": "array",
        "description": "the calls made, each with its arguments (JSON) and the tool's real result",
        "min_items": 1,
        "max_items": 3,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "max_length": 64},
                "arguments": {"type": "string", "max_length": 300},
                "result": {"type": "string", "max_length": 4000},
            },
        },
    },
    "answer": {
        "type": "string",
        "description": "the final answer, using the results",
        "min_length": 5,
        "max_length": 600,
    },
}


class EvalSetSpec(_Strict):
    """An evaluation set the generated data must not leak into (``decontamination.eval_sets``)."""

    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # A Parquet, CSV or JSONL file, or a folder of them (a datasets save_to_disk folder), inside the
    # specs folder: a spec reads files only from its own folder.
    path: str = Field(min_length=1, max_length=500)
    # The columns compared (default: every string column).
    fields: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50
    )

    @field_validator("path")
    @classmethod
    def _inside_specs(cls, path: str) -> str:
        return _inside_specs_folder(path, "decontamination.eval_sets[].path")


class DecontaminationSpec(_Strict):
    """Generated rows that share a word n-gram with an eval set are dropped (or kept and flagged:
    the blocking ``no_eval_contamination`` check then fails until they are dealt with)."""

    eval_sets: list[EvalSetSpec] = Field(default_factory=list, max_length=64)
    ngram: int = Field(default=13, ge=3, le=64)
    # Eval texts shorter than ``ngram`` words but at least this long are matched whole.
    min_ngram: int = Field(default=8, ge=3, le=64)
    action: Literal["drop", "flag"] = "drop"
    # The example fields compared (default: every field).
    fields: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sizes(self) -> DecontaminationSpec:
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram {self.min_ngram} must not exceed ngram {self.ngram}")
        names = [e.name for e in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_sets: each name must be unique; got {names}")
        return self


class DomainSpec(_Strict):
    """A parsed, validated domain spec."""

    name: str = Field(min_length=1)
    version: str | int | float
    domain: str
    type: SpecType
    description: str = Field(min_length=1)
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    constraints: Constraints = Field(default_factory=Constraints)
    hints: Hints = Field(default_factory=Hints)
    matrix: MatrixSpec = Field(default_factory=MatrixSpec)
    # A problem, or a problem tagged with the matrix conditions it fits (``{problem, conditions}``).
    seed_problems: list[str | TaggedSeed] = Field(default_factory=list)
    target_count: int = Field(default=20, ge=1, le=1_000_000)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    program: ProgramSpec | None = None
    training_format: TrainingFormat = "sft"
    privacy: Privacy = Field(default_factory=Privacy)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    verification: VerificationSpec | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    techniques: TechniquesSpec = Field(default_factory=TechniquesSpec)
    seed_source: SeedSource | None = None
    timeseries: TimeseriesSpec | None = None
    events: EventsSpec | None = None
    decontamination: DecontaminationSpec = Field(default_factory=DecontaminationSpec)
    # type tool-use: the tools (fields are then the trace's: request, tool_calls, answer).
    tools: list[ToolSpec] = Field(default_factory=list, max_length=20)

    @property
    def statistical(self) -> bool:
        """A time-series or events domain: made by a statistical generator, not by examples."""
        return self.type in STATISTICAL_TYPES

    @model_validator(mode="before")
    @classmethod
    def _tool_use_fields(cls, data: Any) -> Any:
        """A tool-use spec's fields are its traces' (request, tool_calls, answer), filled in here."""
        kind = data.get("type") if isinstance(data, dict) else None
        if (
            isinstance(kind, str)
            and kind.strip().lower().replace("_", "-") == "tool-use"
            and not data.get("fields")
        ):
            return {**data, "fields": TOOL_USE_FIELDS}
        return data

    @field_validator("type", mode="before")
    @classmethod
    def _canonical_type(cls, value: Any) -> Any:
        """The seed proposal writes types both ways (``reasoning_memory``, ``skill-demonstration``):
        accept either, in any case, and store the hyphenated form."""
        if not isinstance(value, str):
            return value
        canonical = value.strip().lower().replace("_", "-")
        # An unknown type is left as written, so that the error quotes what the user typed.
        return canonical if canonical in get_args(SpecType) else value

    @field_validator("program")
    @classmethod
    def _program_inside_specs(cls, program: ProgramSpec | None) -> ProgramSpec | None:
        """A spec runs code only from its own folder: ``program.module`` is a relative path that
        stays inside it (``ProgramSpec.module_file`` also resolves symlinks when it is used). A
        program named on the command line (``synth train FILE``) is the user's own choice."""
        if program is not None and program.module is not None:
            _inside_specs_folder(program.module, "program.module")
        return program

    @model_validator(mode="after")
    def _cross_refs(self) -> DomainSpec:
        try:
            validate_domain_name(self.domain)
        except UnsafeDomainError as e:
            raise ValueError(str(e)) from None
        if self.type == "timeseries" and self.timeseries is None:
            raise ValueError("type timeseries needs a timeseries section (see the timeseries template)")
        if self.type == "events" and self.events is None:
            raise ValueError("type events needs an events section (see the events template)")
        if self.type == "tool-use":
            if not self.tools:
                raise ValueError("type tool-use needs tools: at least one (see the tool-use template)")
            names = [t.name for t in self.tools]
            if len(set(names)) != len(names):
                raise ValueError(f"tools: each name must be unique; got {names}")
            if set(self.fields) != set(TOOL_USE_FIELDS):
                raise ValueError(
                    f"a tool-use spec's fields are its traces' ({', '.join(TOOL_USE_FIELDS)}): leave them out"
                )
        elif self.tools:
            raise ValueError("tools: only a spec of type tool-use calls tools")
        if not self.statistical and not self.fields:
            raise ValueError("fields: at least one field is required for an example type")
        for name in self.fields:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"field name {name!r} must be a Python identifier not starting with '_'")
        rule_names = [r.name for r in self.rules]
        if len(set(rule_names)) != len(rule_names):
            repeated = sorted({n for n in rule_names if rule_names.count(n) > 1})
            raise ValueError(f"rules: each name must be unique; repeated: {repeated}")
        unknown_compared = [f for f in self.decontamination.fields if f not in self.fields]
        if unknown_compared:
            raise ValueError(
                f"decontamination.fields names unknown fields {unknown_compared}; known: {list(self.fields)}"
            )
        unknown = [f for f in self.constraints.uniqueness if f not in self.fields]
        if unknown:
            raise ValueError(
                f"constraints.uniqueness names unknown fields {unknown}; known: {list(self.fields)}"
            )
        if self.program is not None:
            for role in ("inputs", "outputs"):
                missing = [f for f in getattr(self.program, role) if f not in self.fields]
                if missing:
                    raise ValueError(
                        f"program.{role} names unknown fields {missing}; known: {list(self.fields)}"
                    )
            both = set(self.program.inputs) & set(self.program.outputs)
            if both:
                raise ValueError(f"program inputs and outputs overlap: {sorted(both)}")
        for i, seed in enumerate(self.seed_problems):
            if isinstance(seed, str):
                continue
            for dim, values in seed.allowed().items():
                known = self.matrix.dimensions.get(dim)
                if known is None:
                    raise ValueError(
                        f"seed_problems.{i}.conditions names dimension {dim!r}, which the matrix does not "
                        f"have; dimensions: {sorted(self.matrix.dimensions)}"
                    )
                if values - set(known):
                    raise ValueError(
                        f"seed_problems.{i}.conditions.{dim}: {sorted(values - set(known))} not among the "
                        f"dimension's values {known}"
                    )
        if self.verification is not None:
            for role in ("answer_field", "expression_field"):
                name = getattr(self.verification, role)
                if name not in self.fields:
                    raise ValueError(
                        f"verification.{role} names unknown field {name!r}; known: {list(self.fields)}"
                    )
        return self

    @property
    def version_str(self) -> str:
        return str(self.version)

    def program_or_default(self) -> ProgramSpec:
        """The spec's program, or: first field in, the remaining fields out. A program that names
        only a ``module`` gets that split too, for what reads fields without the module (exports)."""
        names = list(self.fields)
        inputs, outputs = (names, names) if len(names) == 1 else (names[:1], names[1:])
        if self.program is None:
            return ProgramSpec(inputs=inputs, outputs=outputs)
        if self.program.inputs and self.program.outputs:
            return self.program
        return self.program.model_copy(
            update={"inputs": self.program.inputs or inputs, "outputs": self.program.outputs or outputs}
        )

    def with_panel(
        self,
        calibrated: float | None,
        panel: str,
        *,
        diversity: float | None = None,
        on_topic: float | None = None,
        skip_panel: str | None = None,
        field_agreement: float | None = None,
    ) -> tuple[DomainSpec, dict[str, str]]:
        """This spec with every ``auto`` threshold replaced: the consensus threshold by the panel's
        calibrated value (``calibrated``), the diversity threshold by what the profile's generator
        was calibrated to reach (``diversity``); None means never calibrated, so the design default.
        ``skip_panel`` (why the calibration found the panel uninformative) turns an ``auto`` panel
        off, unless the spec sets its own consensus threshold. Also returns where each setting came
        from, for metadata and docs."""
        update: dict[str, Any] = {}
        sources: dict[str, str] = {
            "min_pass_rate": "set in the spec"
            if "min_pass_rate" in self.validation.model_fields_set
            else "design default",
        }
        if self.validation.panel != "auto":
            sources["panel"] = "set in the spec"
        elif not isinstance(self.validation.consensus_threshold, str):
            update["panel"], sources["panel"] = "on", "on: the spec sets consensus_threshold"
        elif skip_panel:
            update["panel"], sources["panel"] = "off", f"auto: skipped, {skip_panel}"
        else:
            update["panel"], sources["panel"] = "on", f"auto: called for profile {panel!r}"
        for name, value, default in (
            ("consensus_threshold", calibrated, DESIGN_CONSENSUS_THRESHOLD),
            ("diversity_threshold", diversity, DESIGN_DIVERSITY_THRESHOLD),
            ("on_topic_threshold", on_topic, DESIGN_ON_TOPIC_THRESHOLD),
            ("field_agreement_threshold", field_agreement, DESIGN_FIELD_AGREEMENT_THRESHOLD),
        ):
            if not isinstance(getattr(self.validation, name), str):
                sources[name] = "set in the spec"
            elif value is None:
                update[name] = default
                sources[name] = f"auto: profile {panel!r} is not calibrated for it, design default"
            else:
                update[name], sources[name] = value, f"auto: calibrated for profile {panel!r}"
        if not update:
            return self, sources
        return self.model_copy(update={"validation": self.validation.model_copy(update=update)}), sources

    def seed_texts(self) -> list[str]:
        """The spec's seed problems as text (tags aside)."""
        return [s if isinstance(s, str) else s.problem for s in self.seed_problems]

    def seed_tags(self) -> dict[str, dict[str, set[str]]]:
        """Normalized problem text -> the conditions its tag allows, for the tagged seeds."""
        return {normalize_text(s.problem): s.allowed() for s in self.seed_problems if not isinstance(s, str)}

    def uniqueness_fields(self) -> list[str]:
        return list(self.constraints.uniqueness) or list(self.fields)


def spec_digest(spec: DomainSpec) -> str:
    """Stable hash of the parsed spec (what prompts and cache keys depend on)."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
