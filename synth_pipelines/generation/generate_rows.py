"""Raw generation: one structured call per planned item, written as it finishes so a killed run resumes.

Items run on the provider loop's worker pool. Each finished row goes to an :class:`InflightRows`
writer (Parquet parts in the state folder, flushed every second). A rerun reads the parts, skips
every item already finished with the same prompt, and only calls the model for the rest: for
items whose reply was unusable too (the same seeds would get the same cached reply), but not for
items that failed on the provider's side, which are tried again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from synth_pipelines.generation import generation_prompts, tool_traces
from synth_pipelines.generation.matrix import MatrixCell
from synth_pipelines.generation.seeds import SeedProblem
from synth_pipelines.llm.client import BudgetExhausted, LLMClient, prompt_hash
from synth_pipelines.llm.types import ChatMessage, CompletionRequest
from synth_pipelines.spec.example_schema import example_json_schema, example_model, field_guide
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.rules import narrowed_enums
from synth_pipelines.spec.text import stable_int
from synth_pipelines.tooluse.tools import ToolSet
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.progress import Progress

# Rough completion budget per example: generous enough for every bounded field, small enough that a
# stuck model stops (the grammar also bounds it).
BASE_MAX_TOKENS = 96
TOKENS_PER_CHAR = 0.35


class Lineage(BaseModel):
    """Where an item's problem came from: its technique (base | variation | adversarial |
    scenario:<factor>) and parent seed problem, and the corpus chunk its seed was grounded in."""

    technique: str = "base"
    parent_problem: str | None = None
    chunk_id: str | None = None
    chunk_source: str | None = None
    chunk_start: int | None = None
    chunk_end: int | None = None


class PlannedItem(Lineage):
    model_config = ConfigDict(frozen=True)

    example_id: str
    cell_id: str
    seed_id: str
    problem: str
    conditions: dict[str, str]
    complexity: str
    sample_index: int
    seed: int
    grounding: str | None = None  # the chunk excerpt shown to the generator


class RawGeneration(Lineage):
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
    failure_kind: str | None = None  # "reply" (unusable answer) | "provider" (no answer)
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
    structured_output: str | None = None


def iter_plan_items(
    cells: Iterable[MatrixCell], seeds: list[SeedProblem], domain: str
) -> Iterator[PlannedItem]:
    """Expand every cell's target into items with stable ids and sampling seeds (lazily: a plan of
    100,000 items is never held in memory)."""
    by_id = {s.seed_id: s for s in seeds}
    for cell in cells:
        seed = by_id.get(cell.seed_id)
        if seed is None:
            raise ValueError(f"matrix cell {cell.cell_id} refers to unknown seed {cell.seed_id}")
        # Base rows keep the ids they always had; a technique row's variant tag keeps its ids apart.
        prefix = f"{cell.cell_id}~{cell.variant}" if cell.variant else cell.cell_id
        for k in range(cell.target):
            eid = f"{prefix}_{k:04d}"
            yield PlannedItem(
                example_id=eid,
                cell_id=cell.cell_id,
                seed_id=seed.seed_id,
                problem=cell.problem or seed.problem,
                conditions=cell.conditions,
                complexity=cell.complexity,
                sample_index=k,
                seed=stable_int(domain, eid),
                technique=cell.technique,
                parent_problem=cell.parent_problem,
                chunk_id=seed.chunk_id,
                chunk_source=seed.chunk_source,
                chunk_start=seed.chunk_start,
                chunk_end=seed.chunk_end,
                grounding=seed.chunk_excerpt,
            )


def max_tokens_for(spec: DomainSpec) -> int:
    # A tool-use item's first reply is its plan (the trace's results are not the model's to write).
    schema = (
        tool_traces.plan_model(spec).model_json_schema()
        if spec.type == "tool-use"
        else example_json_schema(spec)
    )
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


# (id(spec), narrowed enums) -> (spec, schema). The entry keeps the spec alive, so its id cannot be
# reused; the same schema object for every item of a cell also lets the client serialize it once.
_ITEM_SCHEMAS: dict[tuple[int, str], tuple[DomainSpec, dict[str, Any]]] = {}


def item_schema(spec: DomainSpec, item: PlannedItem) -> dict[str, Any]:
    """The JSON schema sent for one item: the spec's, with the enum fields that the spec's rules
    decide for the item's cell narrowed to the values they allow (``spec.rules.narrowed_enums``),
    so a constrained decoder cannot break them. Replies are still validated against the full model.

    Built once per spec and narrowing (pydantic's schema generation costs about a millisecond, on
    the provider's event loop, for every item otherwise); callers must not modify it."""
    if spec.type == "tool-use":  # the first step of a trace: the request and its calls
        return tool_traces.plan_schema(spec)
    narrowed = narrowed_enums(spec, item.conditions, item.complexity)
    key = (id(spec), json.dumps(narrowed, sort_keys=True, default=str))
    entry = _ITEM_SCHEMAS.get(key)
    if entry is None or entry[0] is not spec:
        if len(_ITEM_SCHEMAS) > 4096:
            _ITEM_SCHEMAS.clear()
        entry = _ITEM_SCHEMAS[key] = (spec, _narrowed_schema(example_json_schema(spec), narrowed))
    return entry[1]


def _narrowed_schema(base: dict[str, Any], narrowed: dict[str, list[Any]]) -> dict[str, Any]:
    properties = base.get("properties", {})
    changed = {name: values for name, values in narrowed.items() if "enum" in properties.get(name, {})}
    if not changed:
        return base
    return {
        **base,
        "properties": {
            name: ({**node, "enum": changed[name]} if name in changed else node)
            for name, node in properties.items()
        },
    }


def build_messages(spec: DomainSpec, item: PlannedItem) -> list[ChatMessage]:
    style = f" Style: {spec.hints.style}" if spec.hints.style else ""
    example_block = ""
    if spec.hints.examples:
        shown = spec.hints.examples[item.sample_index % len(spec.hints.examples)]
        example_block = generation_prompts.EXAMPLE_BLOCK.format(example=json.dumps(shown, ensure_ascii=False))
    if item.grounding:
        # Only grounded items carry it: every other prompt (and its cache key) is unchanged.
        example_block += generation_prompts.GROUNDING_BLOCK.format(excerpt=item.grounding)
    conditions = ", ".join(f"{k}={v}" for k, v in sorted(item.conditions.items())) or "none"
    if item.technique == "adversarial":
        # Only adversarial rows say so: every other prompt (and its cache key) stays as it was.
        conditions += f". {generation_prompts.ADVERSARIAL_NOTE}"
    return [
        ChatMessage(
            role="system",
            content=generation_prompts.GENERATE_SYSTEM.format(
                domain=spec.domain, spec_type=spec.type, description=spec.description, style=style
            ),
        ),
        ChatMessage(
            role="user",
            content=generation_prompts.GENERATE_USER.format(
                problem=item.problem,
                conditions=conditions,
                complexity=item.complexity,
                field_guide=(
                    tool_traces.plan_guide(spec)
                    if spec.type == "tool-use"
                    else field_guide(spec, narrowed_enums(spec, item.conditions, item.complexity))
                ),
                example_block=example_block,
            ),
        ),
    ]


def generation_request(
    spec: DomainSpec, item: PlannedItem, model: str, temperature: float, max_tokens: int
) -> CompletionRequest:
    """The first request made for ``item`` on ``model`` (what its cache key is built from):
    ``generate_examples`` sends exactly this, and ``synth plan`` looks it up in the cache."""
    return CompletionRequest(
        model=model,
        messages=tuple(build_messages(spec, item)),
        json_schema=item_schema(spec, item),
        temperature=temperature,
        max_tokens=max_tokens,
        seed=item.seed,
    )


class GenerationShard(BaseModel):
    """One of ``of`` disjoint parts of a domain's plan; ``index`` counts from 0."""

    model_config = ConfigDict(frozen=True)

    index: int
    of: int

    @property
    def label(self) -> str:
        return f"shard_{self.index}"

    def holds(self, example_id: str) -> bool:
        """Whether the item belongs here: decided by its id alone, so an item's id, sampling seed,
        prompt and cached reply are the same whatever the shard count (and a rerun with another
        count finds every finished item again)."""
        return self.of == 1 or stable_int("shard", example_id) % self.of == self.index


def shard_items(items: Iterable[PlannedItem], shard: GenerationShard) -> Iterator[PlannedItem]:
    """The items of ``items`` that ``shard`` holds, lazily."""
    return (item for item in items if shard.holds(item.example_id))


class GenerationOutcome(BaseModel):
    """What one generation pass did. The rows themselves are in the in-flight parts."""

    planned: int
    resumed: int
    generated: int
    fresh: int = 0  # generated by a model call now (not served from the cache)
    ok: int
    failed: int
    skipped: int  # not attempted: the budget stopped the run first
    stopped_reason: str | None = None


def plan_table(spec: DomainSpec, items: Iterable[PlannedItem]) -> pa.Table:
    """``plan_index, example_id, prompt_hash`` of every planned item: what the partition must hold."""
    ids: list[str] = []
    hashes: list[str] = []
    for item in items:
        ids.append(item.example_id)
        hashes.append(prompt_hash(build_messages(spec, item), item_schema(spec, item)))
    return pa.table(
        {
            "plan_index": pa.array(range(len(ids)), pa.int64()),
            "example_id": pa.array(ids, pa.string()),
            "prompt_hash": pa.array(hashes, pa.string()),
        }
    )


def finished_keys(sink: InflightRows) -> set[tuple[str, str]]:
    """Items a rerun need not ask again: answered, or answered unusably (the cache would repeat it)."""
    done = sink.read_columns(["example_id", "prompt_hash", "status", "failure_kind"]).to_pydict()
    return {
        (eid, phash)
        for eid, phash, status, kind in zip(
            done["example_id"], done["prompt_hash"], done["status"], done["failure_kind"], strict=True
        )
        if status == "ok" or kind != "provider"
    }


def generate_examples(
    spec: DomainSpec,
    items: Iterable[PlannedItem],
    client: LLMClient,
    sink: InflightRows,
    *,
    planned: int,
    temperature: float | None = None,
    progress: Progress | None = None,
    on_example: Callable[[dict[str, Any], str], None] | None = None,
    tools: ToolSet | None = None,
) -> GenerationOutcome:
    """Generate every planned item not already in ``sink``. A bad reply becomes a failed row, never
    an exception; an endpoint that is down (circuit open on the whole generator chain) stops the
    pass at once with :class:`~synth_pipelines.llm.limits.CircuitOpen`, everything finished so far
    flushed. A spent budget stops new calls, but cached items are still served (they are free).

    ``on_example(example, problem)`` sees each good row as it arrives (on the provider's event loop:
    it must not block), so that work on it can start while the network is busy.

    A ``tool-use`` spec needs ``tools``: each item is then a trace (``generation.tool_traces``): the
    plan, its calls run for real, and the answer written from their results."""
    if spec.type == "tool-use" and tools is None:
        raise ValueError(f"domain {spec.domain!r} is a tool-use spec: generating it needs its tools")
    model_cls = tool_traces.plan_model(spec) if spec.type == "tool-use" else example_model(spec)
    temp = spec.hints.temperature if temperature is None else temperature
    max_tokens = max_tokens_for(spec)
    done = finished_keys(sink)
    chain = client.generator_chain()
    counts = {"resumed": 0, "generated": 0, "fresh": 0, "ok": 0, "failed": 0, "skipped": 0}
    stop_reason: list[str] = []

    async def run(item: PlannedItem) -> RawGeneration | None:
        request = generation_request(spec, item, chain[0], temp, max_tokens)
        schema = request.json_schema or {}
        phash = prompt_hash(request.messages, schema)
        if (item.example_id, phash) in done:
            counts["resumed"] += 1
            if progress is not None:
                progress.advance(resumed=True)
            return None
        try:
            result = await client.astructured_request(chain, request, model_cls)
        except BudgetExhausted as e:
            if not stop_reason:
                stop_reason.append(str(e))
            counts["skipped"] += 1
            return None
        example_json = result.value.model_dump_json() if result.value is not None else None
        error: str | None = result.error
        failure_kind: str | None = result.failure_kind
        records = [result.record]
        if tools is not None and result.value is not None:
            try:
                trace = await tool_traces.finish_trace(
                    result.value, tools, client, chain, temperature=temp, seed=item.seed
                )
            except BudgetExhausted as e:
                if not stop_reason:
                    stop_reason.append(str(e))
                counts["skipped"] += 1
                return None
            example_json = json.dumps(trace.example) if trace.example is not None else None
            error, failure_kind = trace.error, trace.failure_kind
            if trace.answer_result is not None:
                records.append(trace.answer_result.record)
        ok = example_json is not None and error is None
        return RawGeneration(
            example_id=item.example_id,
            cell_id=item.cell_id,
            seed_id=item.seed_id,
            problem=item.problem,
            complexity=item.complexity,
            conditions_json=json.dumps(item.conditions, sort_keys=True),
            status="ok" if ok else "failed",
            example_json=example_json if ok else None,
            error=None if ok else error,
            failure_kind=None if ok else failure_kind,
            raw_text=None if result.ok else result.raw_text[:2000],
            generator_model=result.record.model,
            prompt_hash=phash,
            temperature=temp,
            seed=item.seed,
            prompt_tokens=sum(r.prompt_tokens for r in records),
            completion_tokens=sum(r.completion_tokens for r in records),
            cost_usd=sum(r.cost_usd for r in records),
            latency_s=round(sum(r.latency_s for r in records), 4),
            attempt=result.record.attempts,
            cache_hit=all(r.model_calls == 0 for r in records),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            structured_output=result.record.structured_output,
            **item.model_dump(include=set(Lineage.model_fields)),
        )

    def finished(item: PlannedItem, row: RawGeneration | None) -> None:
        if row is None:
            return
        sink.add(row.model_dump())
        if on_example is not None and row.example_json is not None:
            on_example(json.loads(row.example_json), row.problem)
        counts["generated"] += 1
        counts["fresh"] += not row.cache_hit
        counts["ok" if row.status == "ok" else "failed"] += 1
        if progress is not None:
            billed = not row.cache_hit
            progress.advance(
                tokens=(row.prompt_tokens + row.completion_tokens) if billed else 0,
                cost_usd=row.cost_usd if billed else 0.0,
            )

    try:
        client.pool(run, items, width=client.concurrency_for(chain), on_result=finished, collect=False)
    finally:
        sink.flush()  # whatever finished before a failure is kept for the rerun
        client.flush()
    return GenerationOutcome(
        planned=planned, stopped_reason=stop_reason[0] if stop_reason else None, **counts
    )
