"""The problem matrix: every combination of the spec's dimensions x complexity, with target counts."""

from __future__ import annotations

import json
import math
import re
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict

from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import normalize_text, stable_hash


class MatrixCell(BaseModel):
    model_config = ConfigDict(frozen=True)

    cell_id: str
    conditions: dict[str, str]
    complexity: str
    seed_id: str
    target: int
    weak: bool = False
    # Generation techniques (spec ``techniques``; see generation/techniques.py). A base row uses
    # its seed's problem; a technique row its own derived ``problem`` and records the seed's as
    # ``parent_problem``. ``variant`` tells a cell's rows apart and enters their example ids.
    technique: str = "base"
    variant: str = ""
    capability: str | None = None
    problem: str | None = None
    parent_problem: str | None = None
    # How the base row's problem was chosen for the cell's conditions (see ``seed_fit``): "asked"
    # (the generator wrote the seed for these conditions), "classified" (a listed seed the generator
    # sorted into the values it fits), "tagged" (the spec tags the seed with
    # conditions it fits), "mentions" (the seed names this cell's values),
    # "neutral" (it names no value of any dimension), or "derived" (no seed fits: the row's own
    # ``problem`` states the conditions instead).
    seed_match: str = "neutral"


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to ``total``."""
    if total <= 0 or not weights or sum(weights) <= 0:
        return [0] * len(weights)
    s = sum(weights)
    quotas = [total * w / s for w in weights]
    floors = [math.floor(q) for q in quotas]
    left = total - sum(floors)
    # Ties broken by index so the split is deterministic.
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def cell_id_for(conditions: dict[str, str], complexity: str) -> str:
    return "c_" + stable_hash(sorted(conditions.items()), complexity, length=10)


def _cell_order(conditions: dict[str, str], level: str) -> str:
    return cell_id_for(conditions, level)


def _planned_cells(spec: DomainSpec, total: int) -> tuple[list[tuple[dict[str, str], str, float]], list[int]]:
    """Every (conditions, level, weight) cell in plan order, and its base target summing to ``total``."""
    combos = spec.matrix.combinations()
    levels = [(lvl, w) for lvl, w in spec.matrix.complexity.items() if w > 0]
    level_totals = largest_remainder(total, [w for _, w in levels])
    cells: list[tuple[dict[str, str], str, float]] = []
    base: list[int] = []
    for (level, level_weight), level_total in zip(levels, level_totals, strict=True):
        # Within a level, hash order decides who gets the remainder, so small totals still cover
        # different dimension values across levels.
        ordered = sorted(combos, key=partial(_cell_order, level=level))
        base += largest_remainder(level_total, [1.0] * len(ordered))
        cells += [(combo, level, level_weight / len(ordered)) for combo in ordered]
    return cells, base


_WORD = re.compile(r"[a-z0-9]+")


def _mentions(words: set[str], value: str) -> bool:
    """Whether a seed's words name a dimension value: each word of the value (3+ letters) appears,
    or a form of it (``delete`` in deleting, deletes, deleted)."""
    parts = [w for w in _WORD.findall(value.lower()) if len(w) >= 3]
    if not parts:
        return False

    def named(part: str) -> bool:
        stem = part[:-1] if part.endswith("e") and len(part) > 4 else part
        return any(w == part or (w.startswith(stem) and len(w) - len(stem) <= 3) for w in words)

    return all(named(p) for p in parts)


def seed_fit(spec: DomainSpec, problem: str) -> tuple[dict[str, set[str]], str]:
    """The values of each dimension a seed problem fits, and how that was decided: its tag in the
    spec ("tagged"), else the values its text names ("mentions": a seed that names ``delete`` fits
    only delete cells of that dimension; dimensions it names no value of fit any value), else
    "neutral" (it fits every cell)."""
    tags = spec.seed_tags().get(normalize_text(problem))
    if tags is not None:
        return tags, "tagged"
    words = set(_WORD.findall(problem.lower()))
    fit: dict[str, set[str]] = {}
    for dim, values in spec.matrix.dimensions.items():
        named = {v for v in values if _mentions(words, v)}
        if named:
            fit[dim] = named
    return fit, ("mentions" if fit else "neutral")


def derived_problem(spec: DomainSpec, conditions: dict[str, str]) -> str:
    """A cell's own problem when no seed fits its conditions: the domain's task stated for exactly
    these conditions (never a seed written for others)."""
    case = ", ".join(f"{dim} {value}" for dim, value in sorted(conditions.items()))
    return f"{spec.description.strip().rstrip('.')}: a case with {case}."


def asked_conditions(seeds: list[dict[str, Any]]) -> dict[str, dict[str, str | list[str]]]:
    """seed_id -> the conditions recorded for a seed (``seed_problems`` rows): one value per
    dimension for a generated seed (what it was asked for), a list of values for a listed seed the
    generator classified."""
    return {s["seed_id"]: json.loads(s["conditions_json"]) for s in seeds if s.get("conditions_json")}


def _recorded_fit(conditions: dict[str, str | list[str]]) -> tuple[dict[str, set[str]], str]:
    """A seed's recorded conditions as the values it fits: "asked" (one value per dimension: the
    generator wrote it for them) or "classified" (lists: the generator sorted a listed seed)."""
    fit = {dim: set(v) if isinstance(v, list) else {v} for dim, v in conditions.items()}
    return fit, "classified" if any(isinstance(v, list) for v in conditions.values()) else "asked"


def build_matrix(
    spec: DomainSpec,
    seeds: list[tuple[str, str]],
    *,
    target_count: int | None = None,
    asked: dict[str, dict[str, str | list[str]]] | None = None,
) -> list[MatrixCell]:
    """Cartesian product of dimensions x complexity; targets follow the complexity distribution and
    sum to ``target_count`` (the spec's by default). The feedback loop's extras for weak cells and
    the technique rows are added on top by ``techniques.plan_technique_rows``: extras only add, so no
    cell's base target ever shrinks and the examples a domain already has keep their ids (and their
    cached generations).

    ``seeds`` are (seed_id, problem). Each cell takes, round robin, a seed whose problem fits its
    conditions: a generated seed fits the conditions it was asked for (``asked``: seed_id ->
    conditions, seed_match "asked"), a listed one what ``seed_fit`` says; a cell no seed fits gets a
    derived problem, so no prompt ever asks for a contradiction ("Create a new user account" under
    ``operation=delete``).
    """
    if not seeds:
        raise ValueError(f"domain {spec.domain!r} has no seed problems to build a matrix from")
    cells, base = _planned_cells(spec, target_count if target_count is not None else spec.target_count)
    asked = asked or {}
    fits = [
        (seed_id, *_recorded_fit(asked[seed_id])) if seed_id in asked else (seed_id, *seed_fit(spec, problem))
        for seed_id, problem in seeds
    ]
    out = []
    for i, (combo, level, _) in enumerate(cells):
        fitting = [
            (seed_id, how)
            for seed_id, allowed, how in fits
            if all(combo.get(dim) in values for dim, values in allowed.items())
        ]
        row = {
            "cell_id": cell_id_for(combo, level),
            "conditions": combo,
            "complexity": level,
            "target": base[i],
        }
        if fitting:
            seed_id, how = fitting[i % len(fitting)]
            out.append(MatrixCell(**row, seed_id=seed_id, seed_match=how))
        else:
            out.append(
                MatrixCell(
                    **row,
                    seed_id=seeds[i % len(seeds)][0],
                    seed_match="derived",
                    problem=derived_problem(spec, combo),
                )
            )
    return out


def feedback_extras(
    spec: DomainSpec, weak_cells: list[str], *, target_count: int | None = None, weak_boost: float = 3.0
) -> dict[str, int]:
    """The examples one feedback episode adds to its weak cells: as if each weak cell weighed
    ``weak_boost`` times as much, in proportion to the domain's total; at least one per weak cell.
    Unknown cell ids are ignored (the spec may have changed since the outcomes were recorded)."""
    total = target_count if target_count is not None else spec.target_count
    cells, _ = _planned_cells(spec, total)
    weak = set(weak_cells)
    ids = [cell_id_for(c, lvl) for c, lvl, _ in cells]
    extra_weights = [
        w * (weak_boost - 1) if cid in weak else 0.0 for cid, (_, _, w) in zip(ids, cells, strict=True)
    ]
    if not any(extra_weights):
        return {}
    extra_total = math.ceil(total * sum(extra_weights) / max(1e-12, sum(w for _, _, w in cells)))
    extra = largest_remainder(extra_total, extra_weights)
    return {cid: max(1, n) for cid, n in zip(ids, extra, strict=True) if cid in weak}
