"""Raw generation: one structured call per planned item, journaled as it goes so a killed run resumes.

Each finished item is appended to a JSONL journal (one fsync'd line per item) beside the partition.
A rerun reads the journal, skips every item already finished with the same prompt, and only calls
the model for the rest. The Parquet partition is written once at the end and the journal removed.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from synth_pipelines.generation import prompts
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.client import BudgetExhausted, LLMClient, prompt_hash
from synth_pipelines.llm.types import ChatMessage
from synth_pipelines.spec.example_schema import example_json_schema, example_model
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import stable_int

# Rough completion budget per example: generous enough for every bounded field, small enough that a
# stuck model stops (the grammar also bounds it).
BASE_MAX_TOKENS = 96
TOKENS_PER_CHAR = 0.35


class PlannedItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    example_id: str
    cell_id: str
    seed_id: str
    problem: str
    conditions: dict[str, str]
    complexity: str
    sample_index: int
    seed: int


class RawGeneration(BaseModel):
    """One row of ``raw_generations``: the example (or the failure) and its full provenance."""

    example_id: str
    cell_id: str
    seed_id: str
    problem: str
    complexity: str
    conditions_json: str
    status: str  # "ok" | "failed"
    example_json: str | None
    error: str | None
    raw_text: str | None
    generator_model: str
    prompt_hash: str
    temperature: float
    seed: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    attempt: int
    cache_hit: bool
    created_at: str


def plan_items(cells: list[MatrixCell], seeds: list[SeedProblem], domain: str) -> list[PlannedItem]:
    """Expand every cell's target into items with stable ids and sampling seeds."""
    by_id = {s.seed_id: s for s in seeds}
    items: list[PlannedItem] = []
    for cell in cells:
        seed = by_id.get(cell.seed_id)
        if seed is None:
            raise ValueError(f"matrix cell {cell.cell_id} refers to unknown seed {cell.seed_id}")
        for k in range(cell.target):
            eid = f"{cell.cell_id}_{k:04d}"
            items.append(
                PlannedItem(
                    example_id=eid,
                    cell_id=cell.cell_id,
                    seed_id=seed.seed_id,
                    problem=seed.problem,
                    conditions=cell.conditions,
                    complexity=cell.complexity,
                    sample_index=k,
                    seed=stable_int(domain, eid),
                )
            )
    return items


def max_tokens_for(spec: DomainSpec) -> int:
    schema = example_json_schema(spec)
    chars = len(json.dumps(schema))  # proxy for how much structure must be emitted
    limit = sum(_max_chars(p) for p in schema.get("properties", {}).values())
    return int(BASE_MAX_TOKENS + TOKENS_PER_CHAR * limit + 0.05 * chars)


def _max_chars(node: dict[str, Any]) -> int:
    t = node.get("type")
    if t == "string":
        return int(node.get("maxLength", 300))
    if t == "array":
        return int(node.get("maxItems", 5)) * (_max_chars(node.get("items", {})) + 2)
    if t == "object":
        return sum(_max_chars(v) + len(k) + 4 for k, v in node.get("properties", {}).items())
    return 12


def field_guide(spec: DomainSpec) -> str:
    lines = []
    for name, f in spec.fields.items():
        bits: list[str] = [f.type]
        if f.enum:
            bits.append("one of " + ", ".join(map(str, f.enum)))
        if f.max_length:
            bits.append(f"at most {f.max_length} chars")
        lines.append(f"- {name} ({'; '.join(bits)}): {f.description}")
    return "\n".join(lines)


def build_messages(spec: DomainSpec, item: PlannedItem) -> list[ChatMessage]:
    style = f" Style: {spec.hints.style}" if spec.hints.style else ""
    example_block = ""
    if spec.hints.examples:
        shown = spec.hints.examples[item.sample_index % len(spec.hints.examples)]
        example_block = prompts.EXAMPLE_BLOCK.format(example=json.dumps(shown, ensure_ascii=False))
    conditions = ", ".join(f"{k}={v}" for k, v in sorted(item.conditions.items())) or "none"
    return [
        ChatMessage(
            role="system",
            content=prompts.GENERATE_SYSTEM.format(
                domain=spec.domain, spec_type=spec.type, description=spec.description, style=style
            ),
        ),
        ChatMessage(
            role="user",
            content=prompts.GENERATE_USER.format(
                problem=item.problem,
                conditions=conditions,
                complexity=item.complexity,
                field_guide=field_guide(spec),
                example_block=example_block,
            ),
        ),
    ]


class Journal:
    """Append-only JSONL of finished rows; tolerant of a torn last line from a killed process."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[tuple[str, str], RawGeneration]:
        rows: dict[tuple[str, str], RawGeneration] = {}
        if not self.path.is_file():
            return rows
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = RawGeneration.model_validate_json(line)
            except ValueError:
                continue  # torn write from a killed run
            rows[(row.example_id, row.prompt_hash)] = row
        return rows

    def append(self, row: RawGeneration) -> None:
        line = row.model_dump_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class GenerationOutcome(BaseModel):
    rows: list[RawGeneration]
    resumed: int
    generated: int
    stopped_reason: str | None = None


def generate_examples(
    spec: DomainSpec,
    items: list[PlannedItem],
    client: LLMClient,
    journal: Journal,
    *,
    temperature: float | None = None,
) -> GenerationOutcome:
    """Generate every planned item not already in the journal. Failures become rows, never exceptions."""
    model_cls = example_model(spec)
    schema = example_json_schema(spec)
    temp = spec.hints.temperature if temperature is None else temperature
    max_tokens = max_tokens_for(spec)
    done = journal.load()
    chain = client.generator_chain()
    stop = threading.Event()
    stop_reason: list[str] = []

    def run(item: PlannedItem) -> RawGeneration | None:
        messages = build_messages(spec, item)
        phash = prompt_hash(messages, schema)
        if (item.example_id, phash) in done:
            return done[(item.example_id, phash)]
        if stop.is_set():
            return None
        try:
            result = client.structured(
                chain,
                messages,
                model_cls,
                json_schema=schema,
                temperature=temp,
                max_tokens=max_tokens,
                seed=item.seed,
            )
        except BudgetExhausted as e:
            stop.set()
            stop_reason.append(str(e))
            return None
        row = RawGeneration(
            example_id=item.example_id,
            cell_id=item.cell_id,
            seed_id=item.seed_id,
            problem=item.problem,
            complexity=item.complexity,
            conditions_json=json.dumps(item.conditions, sort_keys=True),
            status="ok" if result.ok else "failed",
            example_json=result.value.model_dump_json() if result.value is not None else None,
            error=result.error,
            raw_text=None if result.ok else result.raw_text[:2000],
            generator_model=result.record.model,
            prompt_hash=phash,
            temperature=temp,
            seed=item.seed,
            prompt_tokens=result.record.prompt_tokens,
            completion_tokens=result.record.completion_tokens,
            cost_usd=result.record.cost_usd,
            latency_s=round(result.record.latency_s, 4),
            attempt=result.record.attempts,
            cache_hit=result.record.model_calls == 0,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        journal.append(row)
        return row

    results = client.map(run, items, concurrency=client.concurrency_for(chain))
    rows = [r for r in results if r is not None]
    journaled = {id(v) for v in done.values()}
    resumed = sum(1 for r in rows if id(r) in journaled)
    return GenerationOutcome(
        rows=rows,
        resumed=resumed,
        generated=len(rows) - resumed,
        stopped_reason=stop_reason[0] if stop_reason else None,
    )
