"""Tier 4: the whole graph for one domain on the real bundled models (SmolLM2 + Gemma 3 + MiniLM),
with the shipped spec and settings as they are: nothing lowered to make the tiny models pass."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from synth_pipelines.learning.program import load_program
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialization_metadata, materialize_domain
from synth_pipelines.spec.loading import load_spec

pytestmark = pytest.mark.e2e


def test_full_graph_on_bundled_local_models_with_shipped_settings(tmp_path: Path, schemas_dir: Path) -> None:
    warehouse = tmp_path / "warehouse"
    res = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_domain("api_development", instance=instance, target_count=8, resources=res)
    assert result.success
    meta = materialization_metadata(result)
    assert len(meta) == 9  # every pipeline asset, the corpus and ANN index steps included
    raw = meta["raw_generations"]
    assert raw["rows"] == 8 and raw["model_calls"] >= 1 and "smollm2-135m" in raw["models_used"]
    validated = meta["validated_examples"]
    # The local profile's calibration found its panel uninformative: the judges are skipped, said so.
    assert str(validated["panel"]).startswith("skipped (auto: skipped, the calibration of profile 'local'")
    assert validated["validator_calls_skipped"] >= 2 * validated["rows"]
    rows = duckdb.sql(
        "select example_json, validator_scores, consensus, consensus_threshold from read_parquet("
        f"'{warehouse}/validated_examples/*/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert len(rows) == validated["rows"] >= 2
    for example_json, scores, consensus, _threshold in rows:
        example = json.loads(example_json)
        assert example["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        assert len(example["task"]) <= 120
        assert scores == [] and consensus is None  # accepted unjudged, as the metadata says

    # The recorded score is the mean of what was measured, with an interval that holds it.
    program_meta = meta["compiled_program"]
    saved = json.loads((warehouse / "programs/domain=api_development/score.json").read_text())
    assert program_meta["score"] == pytest.approx(
        sum(saved["per_example"]) / len(saved["per_example"]), abs=1e-4
    )
    assert saved["n_eval"] == len(saved["per_example"]) == program_meta["n_eval"]
    if saved["ci_low"] is not None:
        assert saved["ci_low"] <= saved["score"] <= saved["ci_high"]
    # The saved program loads back with the demos it was compiled with.
    spec = load_spec(schemas_dir / "api_development.yaml").spec
    program = load_program(spec, warehouse / "programs/domain=api_development/program.json")
    assert len(program.predict.demos) == program_meta["demos"]

    # Nothing changed: the rerun is served from the cache.
    again = materialization_metadata(
        materialize_domain("api_development", instance=instance, target_count=8, resources=res)
    )
    assert sum(int(m.get("model_calls", 0) or 0) for m in again.values()) == 0
    assert again["validated_examples"]["rows"] == validated["rows"]


def test_a_new_spec_from_a_template_runs_on_the_embedded_default_as_written(tmp_path: Path) -> None:
    """A user's first spec: `synth schema new` from a template, no threshold edited. Its `auto`
    thresholds come from the local profile's calibration, so the embedded models carry it end to
    end and accept a non-empty set (with the design's fixed 0.75 they accepted nothing)."""
    from typer.testing import CliRunner

    from synth_pipelines.cli import app

    schemas = tmp_path / "schemas"
    created = CliRunner().invoke(
        app, ["schema", "new", "my_api_calls", "--type", "api-example", "--schemas", str(schemas)]
    )
    assert created.exit_code == 0, created.output
    spec = load_spec(schemas / "my_api_calls.yaml").spec
    assert spec.validation.consensus_threshold == "auto" and spec.validation.diversity_threshold == "auto"
    warehouse = tmp_path / "warehouse"
    res = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    result = materialize_domain(
        "my_api_calls", instance=dg.DagsterInstance.ephemeral(), target_count=6, resources=res
    )
    assert result.success
    meta = materialization_metadata(result)
    assert len(meta) == 9  # all nine assets, the compiled program included
    assert meta["validated_examples"]["rows"] >= 1
    accepted = duckdb.sql(
        "select conditions_json, example_json from "
        f"read_parquet('{warehouse}/validated_examples/*/*.parquet')"
    ).fetchall()
    for conditions, example in accepted:  # the template's rules held
        if json.loads(conditions).get("operation") == "read":
            assert json.loads(example)["method"] == "GET"
