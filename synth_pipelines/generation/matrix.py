"""The problem matrix: every combination of the spec's dimensions x complexity, with target counts."""

from __future__ import annotations

import itertools
import math
from functools import partial

from pydantic import BaseModel, ConfigDict

from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import stable_hash


class MatrixCell(BaseModel):
    model_config = ConfigDict(frozen=True)

    cell_id: str
    conditions: dict[str, str]
    complexity: str
    seed_id: str
    target: int
    weak: bool = False


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


def build_matrix(
    spec: DomainSpec,
    seed_ids: list[str],
    *,
    target_count: int | None = None,
    weak_cells: list[str] | None = None,
    weak_boost: float = 3.0,
) -> list[MatrixCell]:
    """Cartesian product of dimensions x complexity; targets follow the complexity distribution.

    Within a complexity level the level's share is spread evenly over its cells, in a
    hash-determined order so that small totals still cover different dimension values. Cells named
    in ``weak_cells`` get ``weak_boost`` times the weight and the total grows by their extra share.
    """
    if not seed_ids:
        raise ValueError(f"domain {spec.domain!r} has no seed problems to build a matrix from")
    total = target_count if target_count is not None else spec.target_count
    dims = spec.matrix.dimensions
    names = sorted(dims)
    combos = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*(dims[n] for n in names))
    ]
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
    weak = set(weak_cells or [])
    out: list[MatrixCell] = []
    extra_weights = [w * (weak_boost - 1) if cell_id_for(c, lvl) in weak else 0.0 for c, lvl, w in cells]
    extra_total = (
        math.ceil(total * sum(extra_weights) / max(1e-12, sum(w for _, _, w in cells))) if weak else 0
    )
    extra = largest_remainder(extra_total, extra_weights) if extra_total else [0] * len(cells)
    for i, (combo, level, _) in enumerate(cells):
        cid = cell_id_for(combo, level)
        target = base[i] + extra[i]
        if cid in weak and target == 0:
            target = 1  # a weak cell always gets new examples
        out.append(
            MatrixCell(
                cell_id=cid,
                conditions=combo,
                complexity=level,
                seed_id=seed_ids[i % len(seed_ids)],
                target=target,
                weak=cid in weak,
            )
        )
    return out
