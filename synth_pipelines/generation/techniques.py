"""Generation techniques beyond "a seed x a matrix cell": variations, adversarial problems and scenario
expansion (spec ``techniques``), planned by ``problem_matrix``.

Each matrix cell keeps its base row (the seed problem, as before: same example ids). A technique adds
rows to the cell: ``cell_id`` is unchanged (outcomes and weak cells still name cells), a ``variant``
tag tells the rows apart and enters their example ids, and each row carries its own problem, derived
from the seed by one generator call and recorded with its parent:

* ``variation`` (``v1``, ``v2``...): the seed rewritten for the cell's complexity level, core concept kept;
* ``adversarial`` (``adv``): a harder version that challenges an assumption or probes an edge case
  (aimed at the spec's named ``capabilities`` in turn), still well-posed;
* ``scenario:<factor>`` (``time``, ``resources``, ``stakeholders``, ``constraints``): the seed
  scenario grown along that factor.

Targets: ``adversarial`` is a share of the domain's total, spread over cells in proportion to their
targets; what is left is shared evenly between the base rows and the variation and scenario rows,
handed out in turn across the cells (base first). The extra examples the feedback loop gives a
weak cell go to its adversarial and variation rows first (base only when the spec has neither).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from synth_pipelines.generation.matrix import MatrixCell, largest_remainder
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.replies import parse_reply
from synth_pipelines.llm.types import ChatMessage, CompletionRequest
from synth_pipelines.spec.example_schema import json_schema_for_model
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import normalize_text, stable_int

PROBLEM_MAX_CHARS = 300

FACTOR_HINTS = {
    "time": "a deadline, a sequence of events or a change over time",
    "resources": "a limited budget, team, compute or data",
    "stakeholders": "several people or teams with different goals",
    "constraints": "a rule, regulation or technical limit that must hold",
}

DERIVE_SYSTEM = (
    "You write one problem statement for building training data in the domain '{domain}'. "
    "{description} Reply with JSON only."
)
DERIVE_ASK = {
    "variation": "Rewrite this problem for {complexity} complexity. Keep its core concept; change the "
    "details.\nProblem: {seed}",
    "adversarial": "Write a harder version of this problem that challenges a common assumption or probes "
    "an edge case{capability}. It must stay well-posed: it has a correct answer.\nProblem: {seed}",
    "scenario": "Grow this scenario along {factor}: add {hint}. One or two sentences.\nProblem: {seed}",
}


class DerivedProblem(BaseModel):
    problem: str = Field(min_length=10, max_length=PROBLEM_MAX_CHARS)


class Derivation(BaseModel):
    """One problem to derive: which technique, from which seed, for which cell."""

    key: str
    technique: str
    seed_id: str
    seed: str
    complexity: str
    capability: str | None = None
    factor: str | None = None


def _variants(spec: DomainSpec) -> list[tuple[str, str]]:
    """(variant tag, technique) of the rows that share a cell's non-adversarial target, base first."""
    t = spec.techniques
    return [
        ("", "base"),
        *[(f"v{i}", "variation") for i in range(1, t.variations + 1)],
        *[(factor, f"scenario:{factor}") for factor in t.scenario_expansion],
    ]


def plan_technique_rows(
    spec: DomainSpec, cells: list[MatrixCell], extras: dict[str, int] | None = None
) -> list[MatrixCell]:
    """The matrix with technique rows. ``cells`` are the base cells (targets without feedback
    extras); ``extras`` are the feedback loop's extra examples per weak cell."""
    extras = extras or {}
    t = spec.techniques
    if not t.enabled:
        return [
            c.model_copy(
                update={
                    "target": c.target + max(0, extras.get(c.cell_id, 0)),
                    "weak": extras.get(c.cell_id, 0) > 0,
                }
            )
            for c in cells
        ]
    total = sum(c.target for c in cells)
    adversarial = (
        largest_remainder(round(t.adversarial * total), [float(c.target) for c in cells])
        if t.adversarial
        else [0] * len(cells)
    )
    variants = _variants(spec)
    rows: list[MatrixCell] = []
    capability_no = 0
    turn = 0  # round-robin over the variants across all cells: an even split of the total even
    # when each cell only has an example or two (a per-cell split would give the later variants none)
    for cell, adv in zip(cells, adversarial, strict=True):
        adv = min(adv, cell.target)
        shares = [0] * len(variants)
        for _ in range(cell.target - adv):
            shares[turn % len(variants)] += 1
            turn += 1
        extra = max(0, extras.get(cell.cell_id, 0))
        # The weak cell's extras: adversarial and variation rows first.
        preferred = ([("adv", "adversarial")] if t.adversarial else []) + [
            v for v in variants if v[1] == "variation"
        ]
        extra_shares = (
            dict(
                zip(
                    [tag for tag, _ in preferred],
                    largest_remainder(extra, [1.0] * len(preferred)),
                    strict=True,
                )
            )
            if preferred
            else {}
        )
        base_extra = 0 if preferred else extra
        weak = extra > 0
        for (tag, technique), share in zip(variants, shares, strict=True):
            target = share + (base_extra if tag == "" else extra_shares.get(tag, 0))
            if tag and target <= 0:
                continue
            rows.append(
                cell.model_copy(
                    update={"target": target, "weak": weak, "technique": technique, "variant": tag}
                )
            )
        adv_target = adv + extra_shares.get("adv", 0)
        if adv_target > 0:
            capability = t.capabilities[capability_no % len(t.capabilities)] if t.capabilities else None
            capability_no += 1
            rows.append(
                cell.model_copy(
                    update={
                        "target": adv_target,
                        "weak": weak,
                        "technique": "adversarial",
                        "variant": "adv",
                        "capability": capability,
                    }
                )
            )
    return rows


def derivations(rows: list[MatrixCell], seeds: dict[str, str]) -> list[Derivation]:
    """The problems to derive for the rows with a target (one per seed, complexity and variant:
    cells that share them share the problem)."""
    wanted: dict[str, Derivation] = {}
    for row in rows:
        if row.technique == "base" or row.target <= 0:
            continue
        key = derivation_key(row)
        if key in wanted:
            continue
        technique = row.technique.split(":", 1)[0]
        wanted[key] = Derivation(
            key=key,
            technique=technique,
            seed_id=row.seed_id,
            seed=parent_of(row, seeds),
            complexity=row.complexity,
            capability=row.capability,
            factor=row.technique.split(":", 1)[1] if technique == "scenario" else None,
        )
    return list(wanted.values())


def parent_of(row: MatrixCell, seeds: dict[str, str]) -> str:
    """The problem a technique row derives from: its seed's, or, in a cell no seed fits, the cell's
    own derived problem (a variation of a seed written for other conditions would contradict it)."""
    if row.seed_match == "derived" and row.problem:
        return row.problem if row.parent_problem is None else row.parent_problem
    return seeds[row.seed_id]


def derivation_key(row: MatrixCell) -> str:
    source = row.cell_id if row.seed_match == "derived" else row.seed_id
    return f"{source}|{row.complexity}|{row.variant}|{row.capability or ''}"


def derivation_messages(spec: DomainSpec, d: Derivation) -> list[ChatMessage]:
    ask = DERIVE_ASK[d.technique].format(
        complexity=d.complexity,
        seed=d.seed,
        capability=f" ({d.capability})" if d.capability else "",
        factor=d.factor,
        hint=FACTOR_HINTS.get(d.factor or "", ""),
    )
    return [
        ChatMessage(
            role="system", content=DERIVE_SYSTEM.format(domain=spec.domain, description=spec.description)
        ),
        ChatMessage(role="user", content=ask),
    ]


def derivation_request(spec: DomainSpec, d: Derivation, model: str) -> CompletionRequest:
    """The request that derives ``d``'s problem on ``model`` (``synth plan`` looks it up in the cache)."""
    return CompletionRequest(
        model=model,
        messages=tuple(derivation_messages(spec, d)),
        json_schema=json_schema_for_model(DerivedProblem),
        temperature=0.7,
        max_tokens=160,
        seed=stable_int(d.key),
    )


def usable_problem(text: str, d: Derivation) -> str | None:
    """The derived problem, or None when it merely repeats its seed."""
    text = text.strip()
    return None if normalize_text(text) == normalize_text(d.seed) else text


def parse_derived(reply: str, d: Derivation) -> str | None:
    """The usable problem in a (cached) derivation reply, or None."""
    value, _ = parse_reply(reply, DerivedProblem)
    return usable_problem(value.problem, d) if value is not None else None


def derive_problems(
    spec: DomainSpec, wanted: list[Derivation], client: LLMClient
) -> tuple[dict[str, str], list[str]]:
    """Each derivation's problem (key -> text), and the failures. A reply that is unusable or that
    merely repeats its seed is a failure: its rows fall back to the seed problem's base row."""
    chain = client.generator_chain()

    async def derive(d: Derivation) -> tuple[str, str | None, str | None]:
        request = derivation_request(spec, d, chain[0])
        result = await client.astructured_request(chain, request, DerivedProblem)
        if result.value is None:
            return d.key, None, f"{d.technique} of {d.seed_id}: {result.error}"
        text = usable_problem(result.value.problem, d)
        if text is None:
            return d.key, None, f"{d.technique} of {d.seed_id}: repeats the seed"
        return d.key, text, None

    try:
        results = client.pool(derive, wanted, width=client.concurrency_for(chain))
    finally:
        client.flush()
    problems = {key: text for key, text, _ in results if text is not None}
    failures = [error for _, _, error in results if error is not None]
    return problems, failures


def attach_problems(
    rows: list[MatrixCell], problems: dict[str, str], seeds: dict[str, str]
) -> list[MatrixCell]:
    """Rows with their derived problem and parent; a technique row whose problem could not be
    derived gives its target back to its cell's base row."""
    out: list[MatrixCell] = []
    returned: dict[str, int] = {}
    for row in rows:
        if row.technique == "base":
            out.append(row)
            continue
        problem = problems.get(derivation_key(row))
        if problem is None:
            returned[row.cell_id] = returned.get(row.cell_id, 0) + row.target
            continue
        out.append(row.model_copy(update={"problem": problem, "parent_problem": parent_of(row, seeds)}))
    if returned:
        out = [
            r.model_copy(update={"target": r.target + returned.get(r.cell_id, 0)})
            if r.technique == "base"
            else r
            for r in out
        ]
    return out


def technique_counts(rows: list[MatrixCell]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.technique] = counts.get(r.technique, 0) + r.target
    return counts
