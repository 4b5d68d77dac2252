"""Tier 4: the whole graph for one domain on the real bundled models (SmolLM2 + Gemma 3 + MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialization_metadata, materialize_domain

pytestmark = pytest.mark.e2e


def test_full_graph_on_bundled_local_models(tmp_path: Path, schemas_dir: Path) -> None:
    # Tiny counts: 4 examples, 2 judges each. Thresholds lowered so the tiny judges leave enough rows
    # for the program's train/test split; the gates themselves are exercised in unit tests.
    spec_path = schemas_dir / "api_development.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["validation"]["consensus_threshold"] = 0.0
    spec_path.write_text(yaml.safe_dump(spec))
    warehouse = tmp_path / "warehouse"
    res = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    # early_stop off so both judges score every example (with threshold 0 one judge decides it).
    no_early_stop = {"validated_examples": {"early_stop": False}}
    result = materialize_domain(
        "api_development", instance=instance, target_count=4, resources=res, op_config=no_early_stop
    )
    assert result.success
    meta = materialization_metadata(result)
    assert len(meta) == 7
    raw = meta["raw_generations"]
    assert raw["rows"] == 4 and raw["model_calls"] >= 1
    assert "smollm2-135m" in raw["models_used"]
    validated = meta["validated_examples"]
    assert "gemma3-270m" in validated["models_used"] and "smollm2-135m" in validated["models_used"]
    rows = duckdb.sql(
        "select example_json, validator_scores from read_parquet("
        f"'{warehouse}/validated_examples/*/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()
    assert len(rows) >= 2
    for example_json, scores in rows:
        example = json.loads(example_json)
        assert example["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        assert len(example["task"]) <= 120
        assert {s["model"] for s in scores} <= {"smollm2-135m", "gemma3-270m"}
    assert 0.0 <= meta["compiled_program"]["score"] <= 1.0
    assert (warehouse / "programs/domain=api_development/program.json").is_file()

    # Nothing changed: the rerun is served from the cache.
    again = materialization_metadata(
        materialize_domain(
            "api_development", instance=instance, target_count=4, resources=res, op_config=no_early_stop
        )
    )
    assert sum(int(m.get("model_calls", 0) or 0) for m in again.values()) == 0
