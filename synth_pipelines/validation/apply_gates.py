"""The validated examples: every gate applied to a batch of raw generations, Arrow in and Arrow out.

Gates, in order: the generation's own status, rule checks (schema compliance, degenerate text, PII),
exact duplicates on the spec's uniqueness fields, the judge panel's weighted consensus, and near
duplicates among what the panel accepted. Provenance columns travel from the raw table to the
output tables by position (``take``), never through per-row Python dicts; only the columns a gate
reads are turned into Python values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.config import WeightedModel
from synth_pipelines.spec.model import ADVERSARIAL_CRITERION, DomainSpec
from synth_pipelines.spec.rules import failed_rules
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.consensus import Consensus, JudgeScore, ajudge_example
from synth_pipelines.validation.consistency import field_agreement, field_texts
from synth_pipelines.validation.decontamination import NgramIndex
from synth_pipelines.validation.dedup import near_duplicate_selection
from synth_pipelines.validation.memory import Embed, Memory, memory_duplicates
from synth_pipelines.validation.rule_checks import check_compliance, dedup_key, example_json_text, rule_check
from synth_pipelines.warehouse.progress import Progress
from synth_pipelines.warehouse.tables import JUDGED, PROVENANCE, REJECTED_EXAMPLES, VALIDATED_EXAMPLES

# (problems, example texts) -> cosine similarity of each pair.
Similarity = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class ValidationOutcome:
    """What the gates decided for one batch of raw generations."""

    accepted: pa.Table
    rejected: pa.Table
    verdicts: list[Consensus]
    candidates: int
    stage_counts: Counter[str] = field(default_factory=Counter)
    reason_counts: Counter[str] = field(default_factory=Counter)
    near_duplicates_removed: int = 0
    # decontamination.action flag: the accepted examples that overlap an eval set, and how.
    flagged: dict[str, str] = field(default_factory=dict)
    # Per eval set, the examples that overlapped it (dropped or flagged).
    overlaps_by_eval_set: Counter[str] = field(default_factory=Counter)

    @property
    def judge_calls(self) -> list[JudgeScore]:
        return [j for v in self.verdicts for j in v.judges]

    def all_judges_failed_on_provider(self) -> str | None:
        """The commonest error when every judge call failed for want of an answer, else None."""
        calls = self.judge_calls
        failed = [j for j in calls if j.error_kind == "provider"]
        if not self.candidates or not calls or len(failed) != len(calls):
            return None
        return Counter((j.error or "")[:200] for j in failed).most_common(1)[0][0]


# Candidates per chunk of the embedding gates (on topic, cross-field agreement): small enough that
# the first judges start within seconds, large enough to batch the embedding well.
GATE_CHUNK = 128


def embedded_texts(spec: DomainSpec, example: dict[str, Any], problem: str) -> list[str]:
    """The texts the embedding gates and ``example_embeddings`` look up for one row: the example's
    text (memory gate, embeddings), its problem (on-topic gate, when on) and its text fields
    (cross-field agreement, when on). Embedding them early fills the cache these read."""
    texts = [example_text(example)]
    if spec.validation.min_on_topic > -1:
        texts.append(problem)
    if spec.validation.min_field_agreement > -1:
        texts.extend(field_texts(example).values())
    return texts


def texts_to_prefetch(spec: DomainSpec, screening: Screening) -> list[str]:
    """What a background embedder can compute while the judges wait on the network: each
    candidate's example text (the memory gate and ``example_embeddings`` look it up). Empty when an
    embedding gate is on: its own worker embeds these texts chunk by chunk as judging goes."""
    if spec.validation.min_on_topic > -1 or spec.validation.min_field_agreement > -1:
        return []
    return [example_text(screening.examples[i] or {}) for i in screening.candidates]


@dataclass
class Screening:
    """The gates that need no model, over every row of a raw table: the generation's status, rule
    checks, the spec's SQL rules, exact duplicates and decontamination. A sharded validation computes
    it once; its later steps rebuild it from :meth:`verdicts` (:func:`restore_screening`) or parse
    just their candidates (:func:`screen_candidates`)."""

    cols: dict[str, list[Any]]
    techniques: list[str]
    stage: list[str | None]
    reasons: list[list[str]]
    examples: list[dict[str, Any] | None]
    keys: list[str | None]
    candidates: list[int]  # rows that passed: the panel judges these
    flagged: dict[str, str] = field(default_factory=dict)
    overlapping: Counter[str] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return len(self.stage)

    def candidate_ids(self) -> list[str]:
        return [self.cols["example_id"][i] for i in self.candidates]

    def verdicts(self) -> ScreeningVerdicts:
        """What the screening decided, without the rows: what a sharded validation's first step
        hands its publishing step, so that the costly checks (degenerate text, PII, SQL rules) run
        once per domain."""
        return ScreeningVerdicts(
            digest=rows_digest(self.cols["example_id"], self.cols["example_json"]),
            stage=self.stage,
            reasons=self.reasons,
            keys=self.keys,
            candidates=self.candidates,
            flagged=self.flagged,
            overlapping=dict(self.overlapping),
        )


class ScreeningVerdicts(BaseModel):
    """:class:`Screening` without the rows (see :meth:`Screening.verdicts`)."""

    digest: str  # of the screened rows' ids and example JSON: the same rows must come back
    stage: list[str | None]
    reasons: list[list[str]]
    keys: list[str | None]
    candidates: list[int]
    flagged: dict[str, str]
    overlapping: dict[str, int]


def rows_digest(example_ids: Sequence[str], example_jsons: Sequence[str | None]) -> str:
    """A digest of rows' ids and example JSON, in order: whether a later step reads the rows an
    earlier one screened (``raw_generations`` may be rematerialized in between)."""
    digest = hashlib.sha256()
    for example_id, text in zip(example_ids, example_jsons, strict=True):
        digest.update(example_id.encode())
        digest.update(b"\0")
        digest.update((text or "").encode())
        digest.update(b"\1")
    return digest.hexdigest()


def _raw_columns(raw: pa.Table) -> tuple[dict[str, list[Any]], list[str]]:
    cols = raw.select(
        ["example_id", "status", "error", "example_json", "problem", "conditions_json", "complexity"]
    ).to_pydict()
    n = raw.num_rows
    techniques = raw.column("technique").to_pylist() if "technique" in raw.column_names else ["base"] * n
    return cols, techniques


def _parsed_examples(spec: DomainSpec, cols: dict[str, list[Any]], rows: Sequence[int]) -> dict[int, Any]:
    """The normalized example of each of ``rows`` that parses against the spec (what the screening
    kept as the row's example), without the text checks."""
    return {i: check_compliance(spec, cols["example_json"][i])[0] for i in rows if cols["status"][i] == "ok"}


def restore_screening(spec: DomainSpec, raw: pa.Table, verdicts: ScreeningVerdicts) -> Screening:
    """The :class:`Screening` of ``raw`` from its saved verdicts: only the examples are parsed
    again. Raises ValueError when ``raw`` is not the table that was screened."""
    cols, techniques = _raw_columns(raw)
    if rows_digest(cols["example_id"], cols["example_json"]) != verdicts.digest:
        raise ValueError("raw_generations changed since it was screened")
    parsed = _parsed_examples(spec, cols, range(raw.num_rows))
    return Screening(
        cols,
        techniques,
        list(verdicts.stage),
        [list(r) for r in verdicts.reasons],
        [parsed.get(i) for i in range(raw.num_rows)],
        list(verdicts.keys),
        list(verdicts.candidates),
        dict(verdicts.flagged),
        Counter(verdicts.overlapping),
    )


class JudgedCandidates(BaseModel):
    """What the embedding gates and the panel said of some candidates, keyed by example id (the
    value a validation shard hands to the publishing step)."""

    verdicts: dict[str, Consensus] = Field(default_factory=dict)
    # example id -> (stage, reason) of a candidate an embedding gate rejected before any judge call.
    gated: dict[str, tuple[str, str]] = Field(default_factory=dict)

    @classmethod
    def merged(cls, parts: Sequence[JudgedCandidates]) -> JudgedCandidates:
        out = cls()
        for part in parts:
            out.verdicts.update(part.verdicts)
            out.gated.update(part.gated)
        return out


def screen_examples(spec: DomainSpec, raw: pa.Table, eval_index: NgramIndex | None = None) -> Screening:
    """Every gate before the embedding gates and the panel, for every row of ``raw`` (see
    :func:`validate_examples`)."""
    cols, techniques = _raw_columns(raw)
    n = raw.num_rows
    stage: list[str | None] = [None] * n
    reasons: list[list[str]] = [[] for _ in range(n)]
    examples: list[dict[str, Any] | None] = [None] * n
    keys: list[str | None] = [None] * n
    seen_keys: dict[str, str] = {}
    candidates: list[int] = []
    compliant: list[int] = []
    for i in range(n):
        if cols["status"][i] != "ok":
            stage[i], reasons[i] = "generation", [cols["error"][i] or "generation failed"]
            continue
        example, found = rule_check(
            spec,
            cols["example_json"][i],
            prompt_text=cols["problem"][i],
            conditions=json.loads(cols["conditions_json"][i] or "{}"),
        )
        examples[i] = example
        if example is None or found:
            stage[i], reasons[i] = "rules", found
            continue
        compliant.append(i)
    # The spec's own rules, one vectorized DuckDB query over every compliant example.
    broken = failed_rules(
        spec,
        [examples[i] or {} for i in compliant],
        [
            {**json.loads(cols["conditions_json"][i] or "{}"), "complexity": cols["complexity"][i]}
            for i in compliant
        ],
    )
    for i, messages in zip(compliant, broken, strict=True):
        if messages:
            stage[i], reasons[i] = "rules", messages
            continue
        example = examples[i] or {}
        key = keys[i] = dedup_key(spec, example)
        if key in seen_keys:
            stage[i], reasons[i] = "dedup", [f"exact duplicate of {seen_keys[key]}"]
            continue
        seen_keys[key] = cols["example_id"][i]
        candidates.append(i)
    screening = Screening(cols, techniques, stage, reasons, examples, keys, candidates)
    if eval_index is not None and not eval_index.empty and candidates:
        _decontaminate(spec, screening, eval_index)
    return screening


def screen_candidates(
    spec: DomainSpec, raw: pa.Table, candidate_ids: Sequence[str], digest: str
) -> Screening:
    """The screening of just ``candidate_ids`` (ids the whole domain's screening passed), as a
    validation shard needs it: their examples parsed again, not checked again. ``digest`` is
    :func:`rows_digest` of those rows as they were screened; ValueError when they changed."""
    wanted = pa.array(sorted(set(candidate_ids)), pa.string())
    mine = raw.filter(pc.is_in(raw.column("example_id"), wanted))
    cols, techniques = _raw_columns(mine)
    if rows_digest(cols["example_id"], cols["example_json"]) != digest:
        raise ValueError("raw_generations changed since it was screened")
    n = mine.num_rows
    parsed = _parsed_examples(spec, cols, range(n))
    return Screening(
        cols,
        techniques,
        stage=[None] * n,
        reasons=[[] for _ in range(n)],
        examples=[parsed.get(i) for i in range(n)],
        keys=[None] * n,
        candidates=list(range(n)),
    )


def _decontaminate(spec: DomainSpec, screening: Screening, eval_index: NgramIndex) -> None:
    """Candidates sharing a word n-gram with an eval set: dropped (stage ``decontamination``) or
    flagged, per ``decontamination.action``."""
    decon, examples = spec.decontamination, screening.examples
    candidates = screening.candidates
    overlaps = eval_index.find([example_text(examples[i] or {}, decon.fields or None) for i in candidates])
    for i, overlap in zip(candidates, overlaps, strict=True):
        if overlap is not None:
            screening.overlapping.update(overlap.sets)
            reason = f"overlaps eval set {', '.join(overlap.sets)}: '{overlap.ngram}'"
            if decon.action == "drop":
                screening.stage[i], screening.reasons[i] = "decontamination", [reason]
            else:
                screening.flagged[screening.cols["example_id"][i]] = reason
    screening.candidates = [i for i in candidates if screening.stage[i] is None]


def judge_candidates(
    spec: DomainSpec,
    screening: Screening,
    client: LLMClient,
    judges: list[WeightedModel],
    *,
    early_stop: bool = True,
    progress: Progress | None = None,
    similarity: Similarity | None = None,
    embed: Embed | None = None,
) -> JudgedCandidates:
    """The embedding gates (on topic, cross-field agreement) and the judge panel over the
    screening's candidates. Judging runs on the client's pool; a provider outage on every
    validator raises out of it (circuit open), never scores 0."""
    min_on_topic = spec.validation.min_on_topic
    if min_on_topic > -1 and similarity is None:
        raise ValueError("the spec's on_topic_threshold is on, but no similarity function was given")
    min_agreement = spec.validation.min_field_agreement
    if min_agreement > -1 and embed is None:
        raise ValueError("the spec's field_agreement_threshold is on, but no embed function was given")
    cols, examples, candidates = screening.cols, screening.examples, screening.candidates

    def embedding_gates(chunk: list[int]) -> dict[int, tuple[str, str]]:
        """On topic, then cross-field agreement, for a chunk of candidates: the rejected rows' stage
        and reason. Runs in a worker thread (it is CPU work: embeddings) while judges are busy."""
        rejected: dict[int, tuple[str, str]] = {}
        if min_on_topic > -1 and similarity is not None:
            # Off topic: far from the problem it was written for.
            texts = [example_text(examples[i] or {}) for i in chunk]
            scores = similarity([cols["problem"][i] for i in chunk], texts)
            for i, score in zip(chunk, scores, strict=True):
                if score < min_on_topic:
                    rejected[i] = (
                        "off_topic",
                        f"off topic: similarity {score:.3f} to its problem, below {min_on_topic:.3f}",
                    )
        rest = [i for i in chunk if i not in rejected]
        if min_agreement > -1 and rest and embed is not None:
            # Fields that do not talk about the same thing.
            for i, agreement in zip(
                rest, field_agreement([examples[i] or {} for i in rest], embed), strict=True
            ):
                reason = agreement.rejection(min_agreement)
                if reason:
                    rejected[i] = ("inconsistent_fields", reason)
        return rejected

    # The embedding gates run chunk by chunk in one worker thread, in order; a row's judges start as
    # soon as its chunk has passed, so the CPU work of chunk k+1 overlaps the judge calls of chunk k
    # (issue 25) instead of every embedding finishing before the first judge call.
    chunks = [candidates[k : k + GATE_CHUNK] for k in range(0, len(candidates), GATE_CHUNK)]
    chunk_of = {i: k for k, chunk in enumerate(chunks) for i in chunk}
    gates_on = min_on_topic > -1 or min_agreement > -1
    gate_pool = ThreadPoolExecutor(1, thread_name_prefix="synth-embedding-gates")
    gated = [gate_pool.submit(embedding_gates, chunk) for chunk in chunks] if gates_on else []

    async def judge(i: int) -> Consensus | None:
        if gated and i in (await asyncio.wrap_future(gated[chunk_of[i]])):
            return None  # rejected by an embedding gate: no judge call
        return await ajudge_example(
            client,
            spec,
            judges,
            example_id=cols["example_id"][i],
            problem=cols["problem"][i],
            example=examples[i] or {},
            early_stop=early_stop,
            extra_criteria=[ADVERSARIAL_CRITERION] if screening.techniques[i] == "adversarial" else None,
            conditions=json.loads(cols["conditions_json"][i] or "{}"),
        )

    def judged(i: int, verdict: Consensus | None) -> None:
        if progress is not None:
            billed = [j for j in verdict.judges if j.model_calls] if verdict is not None else []
            progress.advance(
                tokens=sum(j.prompt_tokens + j.completion_tokens for j in billed),
                cost_usd=sum(j.cost_usd for j in billed),
            )

    verdict_list: list[Consensus | None] = []
    out = JudgedCandidates()
    try:
        if spec.validation.judges_run:
            try:
                verdict_list = client.pool(
                    judge, candidates, width=client.concurrency_for(j.model for j in judges), on_result=judged
                )
            finally:
                client.flush()
        else:
            # The profile's calibration found the panel adds no agreement: what the gates before it
            # pass is accepted unjudged (consensus null), and the asset says so in its metadata.
            unjudged = Consensus(
                consensus=None, passed=True, spread=None, judges=[], skipped_calls=len(judges)
            )
            failed = {i for future in gated for i in future.result()}
            verdict_list = [None if i in failed else unjudged for i in candidates]
            if progress is not None and candidates:
                progress.advance(len(candidates))
        for future in gated:
            for i, rejection in future.result().items():
                out.gated[cols["example_id"][i]] = rejection
    finally:
        gate_pool.shutdown(wait=True, cancel_futures=True)
    # Rows an embedding gate rejected have no verdict: they were never judged.
    out.verdicts = {
        cols["example_id"][i]: verdict
        for i, verdict in zip(candidates, verdict_list, strict=True)
        if verdict is not None
    }
    return out


def validate_examples(
    spec: DomainSpec,
    raw: pa.Table,
    client: LLMClient,
    judges: list[WeightedModel],
    *,
    early_stop: bool = True,
    progress: Progress | None = None,
    similarity: Similarity | None = None,
    memory: Memory | None = None,
    embed: Embed | None = None,
    eval_index: NgramIndex | None = None,
) -> ValidationOutcome:
    """Run every gate over ``raw`` (a ``raw_generations`` table) in one process: the screening
    (:func:`screen_examples`), the embedding gates and the panel (:func:`judge_candidates`), then
    the domain-wide gates (:func:`finish_validation`). A sharded validation runs the same three
    pieces in different steps.

    ``similarity(problems, texts)`` gives the cosine similarity of each example's text to its
    problem; it is needed when the spec's ``on_topic_threshold`` is on (above -1). ``embed`` is
    needed when ``field_agreement_threshold`` is on. With the spec's panel off
    (``validation.judges_run`` false) no judge is called and the candidates are accepted unjudged
    (consensus null). ``memory`` (the
    domain's earlier accepted examples) and ``embed`` (texts -> unit vectors) turn on the last
    gate: a new example too close to a remembered one is a ``memory_duplicate``. ``eval_index``
    (the spec's eval sets, see ``validation.decontamination``) rejects an example that shares a
    word n-gram with one (stage ``decontamination``), before any judge is paid to score it; with
    ``decontamination.action: flag`` the example stays and ``flagged`` names it."""
    screening = screen_examples(spec, raw, eval_index)
    if progress is not None and screening.rows > len(screening.candidates):
        progress.advance(screening.rows - len(screening.candidates))  # decided by the rules, no judge needed
    judged = judge_candidates(
        spec,
        screening,
        client,
        judges,
        early_stop=early_stop,
        progress=progress,
        similarity=similarity,
        embed=embed,
    )
    return finish_validation(spec, raw, screening, judged, memory=memory, embed=embed)


def finish_validation(
    spec: DomainSpec,
    raw: pa.Table,
    screening: Screening,
    judged: JudgedCandidates,
    *,
    memory: Memory | None = None,
    embed: Embed | None = None,
) -> ValidationOutcome:
    """The panel's verdicts applied, then the gates that compare examples across the whole domain:
    near duplicates among the accepted examples, and the domain's memory of earlier runs."""
    cols, examples = screening.cols, screening.examples
    stage, reasons = list(screening.stage), [list(r) for r in screening.reasons]
    missing = [e for e in screening.candidate_ids() if e not in judged.verdicts and e not in judged.gated]
    if missing:
        raise ValueError(
            f"{len(missing)} candidate(s) have neither a verdict nor an embedding-gate result "
            f"(first: {missing[0]}); every shard of the validation must have run"
        )
    verdicts: dict[int, Consensus] = {}
    for i in screening.candidates:
        example_id = cols["example_id"][i]
        if example_id in judged.gated:
            stage[i], reasons[i] = judged.gated[example_id][0], [judged.gated[example_id][1]]
        else:
            verdicts[i] = judged.verdicts[example_id]
    accepted: list[int] = []
    for i, verdict in verdicts.items():
        if verdict.passed:
            accepted.append(i)
        else:
            stage[i], reasons[i] = "consensus", [verdict.reason or "below threshold"]

    # Near duplicates among accepted examples collapse to their best-scored member.
    keep, replaced_by = near_duplicate_selection(
        [example_text(examples[i] or {}, spec.uniqueness_fields()) for i in accepted],
        [verdicts[i].consensus or 0.0 for i in accepted],
        threshold=spec.validation.near_duplicate_threshold,
    )
    replaced: dict[int, list[str]] = {}
    for dropped, winner in replaced_by.items():
        i, w = accepted[dropped], accepted[winner]
        replaced.setdefault(w, []).append(cols["example_id"][i])
        stage[i], reasons[i] = "near_duplicate", [f"near duplicate of {cols['example_id'][w]}"]
    accepted = [accepted[k] for k in keep]
    memory_threshold = spec.validation.memory_duplicate_threshold
    if memory is not None and len(memory) and memory_threshold is not None and accepted:
        if embed is None:
            raise ValueError("a memory was given without an embed function")
        texts = [example_text(examples[i] or {}) for i in accepted]
        vectors = embed(texts)
        earlier = memory_duplicates(
            [cols["example_id"][i] for i in accepted], vectors, memory, memory_threshold, texts=texts
        )
        for k, (remembered, cosine) in earlier.items():
            i = accepted[k]
            stage[i] = "memory_duplicate"
            reasons[i] = [f"near duplicate of earlier accepted example {remembered} (cosine {cosine:.3f})"]
        accepted = [i for k, i in enumerate(accepted) if k not in earlier]
    rejected = [i for i in range(screening.rows) if stage[i] is not None]

    columns = _JudgedColumns(
        verdicts=verdicts,
        example_json=[
            example_json_text(e) if e is not None else cols["example_json"][i] for i, e in enumerate(examples)
        ],
        dedup_keys=screening.keys,
        replaced=replaced,
        threshold=spec.validation.threshold,
        spec_version=spec.version_str,
    )
    rejected_judged = columns.for_rows(rejected)
    rejected_judged["fail_stage"] = pa.array([stage[i] for i in rejected], pa.string())
    rejected_judged["fail_reasons"] = pa.array([reasons[i] for i in rejected], pa.list_(pa.string()))
    return ValidationOutcome(
        accepted=_rows_table(raw, accepted, columns.for_rows(accepted), VALIDATED_EXAMPLES),
        rejected=_rows_table(raw, rejected, rejected_judged, REJECTED_EXAMPLES),
        verdicts=list(verdicts.values()),
        candidates=len(verdicts),
        stage_counts=Counter(str(stage[i]) for i in rejected),
        reason_counts=Counter(
            f"rules: {reason.split(':', 1)[-1].strip()}" if stage[i] == "rules" else str(stage[i])
            for i in rejected
            for reason in reasons[i]
        ),
        near_duplicates_removed=len(replaced_by),
        flagged=screening.flagged,
        overlaps_by_eval_set=screening.overlapping,
    )


@dataclass
class _JudgedColumns:
    """Builds the validation columns (``tables.JUDGED``) for any subset of rows."""

    verdicts: dict[int, Consensus]
    example_json: list[str | None]
    dedup_keys: list[str | None]
    replaced: dict[int, list[str]]
    threshold: float
    spec_version: str

    def for_rows(self, indices: list[int]) -> dict[str, pa.Array]:
        types = dict(JUDGED)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        v = self.verdicts
        columns: dict[str, list[Any]] = {
            "example_json": [self.example_json[i] for i in indices],
            "dedup_key": [self.dedup_keys[i] for i in indices],
            "consensus": [v[i].consensus if i in v else None for i in indices],
            "consensus_threshold": [self.threshold] * len(indices),
            "validator_spread": [v[i].spread if i in v else None for i in indices],
            "validator_scores": [_validator_scores(v.get(i)) for i in indices],
            "validators_skipped": [v[i].skipped_calls if i in v else 0 for i in indices],
            "replaced_example_ids": [self.replaced.get(i) for i in indices],
            "spec_version": [self.spec_version] * len(indices),
            "validated_at": [now] * len(indices),
        }
        return {name: pa.array(values, types[name]) for name, values in columns.items()}


def _validator_scores(c: Consensus | None) -> list[dict[str, Any]]:
    return [
        {
            "model": j.model,
            "weight": j.weight,
            "score": j.score,
            "criteria_json": json.dumps(j.scores),
            "reason": j.reason,
            "error": j.error,
        }
        for j in (c.judges if c is not None else [])
    ]


def _rows_table(
    raw: pa.Table, indices: list[int], judged: dict[str, pa.Array], schema: pa.Schema
) -> pa.Table:
    """Provenance columns taken from ``raw`` by position, plus the judged columns, in ``schema``."""
    base = raw.take(pa.array(indices, pa.int64()))
    # A raw partition written before a provenance column existed gets nulls for it.
    columns = {
        name: base.column(name) if name in base.column_names else pa.nulls(len(indices), dtype)
        for name, dtype in PROVENANCE
    }
    columns.update(judged)
    return pa.table({name: columns[name] for name in schema.names}).cast(schema)
