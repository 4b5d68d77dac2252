"""Dataset cards: what an export is, how it was made, and how to load it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.validation.gates import judged_pass_rate


def _table(rows: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _eval_sets(spec: DomainSpec, dropped: int) -> str:
    """Which eval sets the rows were checked against for overlap (spec ``decontamination``)."""
    decon = spec.decontamination
    if not decon.eval_sets:
        return "none (the spec names no decontamination.eval_sets)"
    names = ", ".join(f"`{e.name}` ({e.path})" for e in decon.eval_sets)
    what = f"{dropped} overlapping example(s) dropped" if decon.action == "drop" else "overlaps flagged"
    return f"{names}; word {decon.ngram}-grams (whole texts of {decon.min_ngram}+ words); {what}"


def dataset_card(
    spec: DomainSpec,
    fmt: str,
    *,
    rows: int,
    splits: dict[str, int],
    name: str,
    raw: list[dict[str, Any]],
    validated: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
    diversity: dict[str, Any],
    skipped: dict[str, int],
    run_ids: list[str],
) -> str:
    """Markdown card for one domain's export in one format."""
    generators = Counter(r.get("generator_model") for r in raw if r.get("status") == "ok")
    validators = sorted({s["model"] for r in validated for s in (r.get("validator_scores") or [])})
    prompt_hashes = Counter(r.get("prompt_hash") for r in raw)
    cost = sum(float(r.get("cost_usd") or 0.0) for r in raw)
    tokens = sum(int(r.get("prompt_tokens") or 0) + int(r.get("completion_tokens") or 0) for r in raw)
    stages = Counter(r.get("fail_stage") for r in rejected)
    pass_rate = judged_pass_rate(len(validated), stages).rate
    consensus = [r["consensus"] for r in validated if r.get("consensus") is not None]
    what = _table(
        [
            ("domain", f"`{spec.domain}` — {spec.name}"),
            ("spec version", spec.version_str),
            ("type", spec.type),
            ("format", f"{fmt}" + (" (the spec's training_format)" if fmt == spec.training_format else "")),
            ("rows", rows),
            ("splits", ", ".join(f"{k}: {v}" for k, v in sorted(splits.items())) or "none"),
            ("skipped while building", ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "nothing"),
        ]
    )
    how = _table(
        [
            ("generator models", ", ".join(f"{m} ({n})" for m, n in generators.most_common()) or "none"),
            ("validator models", ", ".join(validators) or "none"),
            (
                "distinct prompts (hashes)",
                f"{len(prompt_hashes)}; e.g. " + ", ".join(f"`{h}`" for h, _ in prompt_hashes.most_common(3)),
            ),
            ("generated / accepted", f"{len(raw)} / {len(validated)}"),
            ("rejected by stage", ", ".join(f"{k}: {v}" for k, v in stages.most_common()) or "none"),
            ("consensus threshold", spec.validation.threshold),
            ("consensus pass rate", f"{pass_rate:.2%}" if pass_rate is not None else "n/a"),
            ("mean consensus (accepted)", f"{sum(consensus) / len(consensus):.3f}" if consensus else "n/a"),
            (
                "diversity (mean pairwise cosine distance)",
                diversity.get("mean_pairwise_cosine_distance", "n/a"),
            ),
            ("semantic clusters", diversity.get("clusters", "n/a")),
            ("checked against eval sets", _eval_sets(spec, stages.get("decontamination", 0))),
            ("tokens / cost", f"{tokens} / ${cost:.4f}"),
            ("Dagster run ids", ", ".join(f"`{r}`" for r in run_ids) or "n/a"),
        ]
    )
    techniques = Counter(r.get("technique") or "base" for r in validated)
    grounded = Counter(r["chunk_source"] for r in validated if r.get("chunk_source"))
    sources = ""
    if grounded:
        listed = "\n".join(f"| `{source}` | {n} |" for source, n in grounded.most_common())
        sources = (
            "## Sources\n\nExamples grounded in the corpus (spec `seed_source`), by file; each row's "
            "`chunk_id`, `chunk_start` and `chunk_end` locate its chunk.\n\n"
            f"| file | accepted examples |\n|---|---|\n{listed}\n\n"
        )
    if set(techniques) != {"base"} and techniques:
        sources += (
            "## Techniques\n\n"
            + _table([(t, n) for t, n in sorted(techniques.items())])
            + "\n\n`technique` and `parent_problem` columns give each row's lineage.\n\n"
        )
    load = f"""```python
import duckdb
duckdb.sql("select * from read_parquet('{name}.parquet')").show()

import polars as pl
df = pl.read_parquet("{name}.parquet")

import pandas as pd
df = pd.read_parquet("{name}.parquet")

from datasets import load_dataset
ds = load_dataset("parquet", data_files="{name}.parquet")["train"]
```
"""
    if fmt == "retrieval":
        load += f"""
Columns: `query`, `positive`, `negative_1` .. `negative_k` (hard negatives mined from the example
embeddings, from other matrix cells, none within the margin of the positive's similarity to the
query or a near copy of the positive). sentence-transformers reads them as (anchor, positive,
negatives):

```python
from datasets import load_dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
train = load_dataset("parquet", data_files="{name}.parquet")["train"]
SentenceTransformerTrainer(model=model, train_dataset=train,
                           loss=losses.MultipleNegativesRankingLoss(model)).train()
```
"""
    return (
        f"# {spec.name}: {fmt} export\n\n{spec.description.strip()}\n\n## What it is\n\n{what}\n\n"
        f"## How it was made\n\n{how}\n\nGenerated by synth-pipelines from `schemas/{spec.domain}.yaml`; "
        f"every row passed rule checks, exact and near-duplicate removal and multi-model validation.\n\n"
        f"{sources}"
        f"## How to load it\n\nFiles: `{name}.parquet` and `{name}.jsonl` beside this card.\n\n{load}"
    )
