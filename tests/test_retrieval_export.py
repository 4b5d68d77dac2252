"""The retrieval export (issue 27, part 2): (query, positive, negatives) rows with mined hard
negatives that are never the positive or a near copy of it, loadable by datasets and trainable
with sentence-transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synth_pipelines.exports.retrieval import MiningSettings, retrieval_rows
from synth_pipelines.spec.loading import load_spec

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "example_id": f"e{i}",
            "cell_id": f"c{i % 4}",
            "problem": f"problem {i}",
            "example_json": json.dumps(
                {
                    "task": f"task number {i}",
                    "method": "GET",
                    "endpoint": f"/r{i}",
                    "explanation": f"answer {i} end",
                }
            ),
        }
        for i in range(n)
    ]


def test_negatives_are_other_cells_never_the_positive_a_near_copy_or_within_the_margin() -> None:
    spec = load_spec(SCHEMAS / "api_development.yaml").spec
    rows = _rows(24)
    rng = np.random.default_rng(0)
    base = {r["example_id"]: _unit(rng.normal(size=384)) for r in rows}
    # e1 is a near copy of e0 (cosine ~0.999) in another cell: it must never be e0's negative.
    base["e1"] = _unit(base["e0"] + 0.01 * rng.normal(size=384))
    queries = {f"e{i}": base[f"e{i}"] for i in range(24)}  # each query sits on its own positive

    def embed(texts: list[str]) -> np.ndarray:
        # A query's vector: its own example's, plus e5's for the first query (a candidate scoring
        # almost as high as the positive: a likely false negative the margin must drop).
        out = []
        for text in texts:
            i = int(text.split("task number ")[1].split()[0])
            vector = queries[f"e{i}"] + (0.97 * base["e5"] if i == 0 else 0)
            out.append(_unit(vector))
        return np.stack(out)

    out, skipped = retrieval_rows(spec, rows, base, embed, MiningSettings(negatives=3, margin=0.05))
    assert skipped == {"no_embedding": 0, "too_few_hard_negatives": 0} and len(out) == 24
    by_query = {r["query"]: r for r in out}
    positives = {json.loads(r["example_json"])["task"]: r for r in rows}
    for row in out:
        negatives = [row[f"negative_{k}"] for k in (1, 2, 3)]
        assert row["positive"] not in negatives
        assert len(set(negatives)) == 3
    first = next(r for q, r in by_query.items() if "task number 0" in q)
    first_negatives = {first[f"negative_{k}"] for k in (1, 2, 3)}
    joined = " | ".join(first_negatives)
    assert "answer 1 end" not in joined  # the near copy
    assert "answer 5 end" not in joined  # within the margin of the positive
    # Same-cell examples (e4, e8, ... share e0's cell c0) are never negatives either.
    assert not any(f"answer {i} end" in joined for i in range(4, 24, 4))
    assert first["positive"].endswith("answer 0 end") and positives
    # Without the margin, e5 (0.70 to the query against the positive's 0.72) is the first negative.
    unguarded, _ = retrieval_rows(spec, rows, base, embed, MiningSettings(negatives=3, margin=0.0))
    assert next(r for r in unguarded if "task number 0" in r["query"])["negative_1"].endswith("answer 5 end")


def test_a_row_without_enough_hard_negatives_is_left_out_and_counted() -> None:
    spec = load_spec(SCHEMAS / "api_development.yaml").spec
    rows = _rows(4)  # four cells, one example each: three candidates per query
    rng = np.random.default_rng(1)
    vectors = {r["example_id"]: _unit(rng.normal(size=384)) for r in rows}

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([vectors[f"e{t.split('task number ')[1].split()[0]}"] for t in texts])

    out, skipped = retrieval_rows(spec, rows, vectors, embed, MiningSettings(negatives=4))
    assert out == [] and skipped["too_few_hard_negatives"] == 4
    rows_missing = retrieval_rows(spec, rows, {}, lambda t: np.zeros((len(t), 384), np.float32))
    assert rows_missing == ([], {"no_embedding": 4})


@pytest.mark.filterwarnings("ignore")
def test_the_exported_file_loads_with_datasets_and_trains_minilm_for_two_steps(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    from synth_pipelines.exports.training import build_export
    from synth_pipelines.llm.embeddings import bundled_model_dir
    from synth_pipelines.warehouse.storage import Warehouse
    from tests.materialize import DOMAIN, materialize_domain, up_to

    warehouse = tmp_path / "wh"
    result = materialize_domain(up_to("example_embeddings"), warehouse, scripted_schemas_dir, target=16)
    assert result.success
    wh = Warehouse(str(warehouse))
    spec = wh.materialized_spec(DOMAIN)
    assert spec is not None
    export = build_export(wh, spec, "retrieval", tmp_path / "out")
    assert export.rows >= 4, export.skipped
    ds = datasets.load_dataset("parquet", data_files=export.parquet)["train"]
    assert ds.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    assert all(row["positive"] not in (row["negative_1"], row["negative_2"], row["negative_3"]) for row in ds)
    assert "sentence_transformers" in Path(export.card).read_text()

    monkeypatch.setenv("WANDB_DISABLED", "true")
    model = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    before = model.encode(["probe sentence"])[0].copy()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=ds, loss=losses.MultipleNegativesRankingLoss(model)
    )
    out = trainer.train()
    assert out.global_step == 2 and np.isfinite(out.training_loss)
    assert not np.allclose(model.encode(["probe sentence"])[0], before)  # the weights moved
