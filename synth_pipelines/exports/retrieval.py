"""Retriever training rows: (query, positive, negative_1..k) from a domain's validated examples.

The query is the example's program inputs (the spec's ``program.inputs``, else the matrix
problem) and the positive is its outputs, rendered as the SFT and QA exports render them. Hard
negatives are other examples' outputs, mined from the example embeddings: the candidates nearest
the query, from other matrix cells, with two guards against false negatives (NeMo Curator's
positive-aware mining):

* a candidate whose similarity to the query is within ``margin`` of the positive's is dropped
  (it may answer the query as well as the positive does);
* a candidate within ``near_copy`` cosine of the positive (example embeddings) is dropped, and the
  positive itself never is a candidate.

Rows that do not get ``negatives`` hard negatives are left out (``skipped`` says how many): every
row has the same columns, ``query, positive, negative_1 .. negative_k``, which sentence-transformers'
trainer reads as (anchor, positive, negatives) for MultipleNegativesRankingLoss, and ``datasets``
loads as-is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from synth_pipelines.exports.rendering import render
from synth_pipelines.spec.model import DomainSpec

# texts -> L2-normalized vectors (the model of the example embeddings).
Embed = Callable[[list[str]], np.ndarray]
BLOCK = 1024  # queries scored at once: a (BLOCK x n) float32 matrix


class MiningSettings(BaseModel):
    negatives: int = Field(default=3, ge=1, le=32)
    margin: float = Field(default=0.05, ge=0, le=1)
    near_copy: float = Field(default=0.95, gt=0, le=1)
    candidates: int = Field(default=30, ge=1, le=1000, description="nearest examples looked at per query")


def query_and_positive(spec: DomainSpec, row: dict[str, Any]) -> tuple[str, str]:
    program = spec.program_or_default()
    example = json.loads(row["example_json"])
    query = render(example, program.inputs) if program.inputs else str(row.get("problem") or "")
    return query, render(example, program.outputs)


def retrieval_rows(
    spec: DomainSpec,
    validated: list[dict[str, Any]],
    embeddings: dict[str, np.ndarray],
    embed: Embed,
    settings: MiningSettings | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows, and what was skipped and why. ``embeddings`` are the example embeddings by id."""
    settings = settings or MiningSettings()
    usable = [r for r in validated if r["example_id"] in embeddings]
    skipped = {"no_embedding": len(validated) - len(usable)}
    if not usable:
        return [], skipped
    pairs = [query_and_positive(spec, r) for r in usable]
    docs = np.stack([embeddings[r["example_id"]] for r in usable]).astype(np.float32)
    queries = embed([q for q, _ in pairs]).astype(np.float32)
    cells = np.array([str(r.get("cell_id")) for r in usable])
    positives = np.array([p for _, p in pairs], dtype=object)
    rows: list[dict[str, Any]] = []
    short = 0
    k = min(settings.candidates, len(usable))
    for start in range(0, len(usable), BLOCK):
        block = slice(start, min(start + BLOCK, len(usable)))
        scores = queries[block] @ docs.T  # query x example similarity
        for offset, row_scores in enumerate(scores):
            i = start + offset
            positive_score = float(row_scores[i])
            nearest = np.argpartition(-row_scores, k - 1)[:k] if k < len(usable) else np.arange(len(usable))
            nearest = nearest[np.argsort(-row_scores[nearest], kind="stable")]
            chosen: list[int] = []
            for j in nearest.tolist():
                if (
                    j == i
                    or cells[j] == cells[i]
                    or row_scores[j] > positive_score - settings.margin
                    or float(docs[i] @ docs[j]) >= settings.near_copy
                    or positives[j] == positives[i]
                ):
                    continue
                chosen.append(j)
                if len(chosen) == settings.negatives:
                    break
            if len(chosen) < settings.negatives:
                short += 1
                continue
            rows.append(
                {
                    "query": pairs[i][0],
                    "positive": pairs[i][1],
                    **{f"negative_{n + 1}": str(positives[j]) for n, j in enumerate(chosen)},
                }
            )
    skipped["too_few_hard_negatives"] = short
    return rows, skipped
