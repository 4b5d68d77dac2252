"""dbt_quality builds against a small fixture warehouse, loaded into Dagster with dagster-dbt."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_dbt import DbtCliResource

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain


def test_dbt_models_and_tests_run_as_dagster_assets(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "warehouse"
    resources = {
        "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(scripted_schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    for domain in ("api_development", "data_analysis"):
        assert materialize_domain(domain, instance=instance, target_count=6, resources=resources).success

    monkeypatch.setenv("SYNTH_DUCKDB_PATH", str(warehouse / "synth.duckdb"))
    from synth_pipelines.assets.dbt import DBT_EXECUTABLE, dbt_project, dbt_quality_models

    dbt = DbtCliResource(project_dir=str(dbt_project.project_dir), dbt_executable=DBT_EXECUTABLE)
    result = dg.materialize([dbt_quality_models], resources={"dbt": dbt}, instance=instance)
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"marts/sft_training", "marts/qa_training", "marts/domain_quality_summary"} <= materialized
    checks = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert len(checks) >= 20 and all(c.passed for c in checks)
    names = {c.check_name for c in checks}
    assert any("relationships" in n for n in names) and any("accepted_range" in n for n in names)
    with duckdb.connect(str(warehouse / "synth.duckdb"), read_only=True) as conn:
        summary = conn.execute(
            "select domain, generated, accepted, pass_rate from marts.domain_quality_summary order by domain"
        ).fetchall()
        assert [r[0] for r in summary] == ["api_development", "data_analysis"]
        assert all(r[1] == 6 and 0 <= r[3] <= 1 for r in summary)
        roles = conn.execute("select [m.role for m in messages] from marts.sft_training limit 1").fetchone()[
            0
        ]
        assert roles == ["system", "user", "assistant"]


def test_dbt_source_tests_catch_a_consensus_violation(tmp_path: Path) -> None:
    """The custom consensus test fails when an accepted row is below its threshold."""
    import os
    import subprocess

    from synth_pipelines.assets.dbt import DBT_EXECUTABLE, DBT_PROJECT_DIR

    db = tmp_path / "bad.duckdb"
    with duckdb.connect(str(db)) as conn:
        conn.execute(
            "create table validated_examples as select 'd' as domain, 'e1' as example_id, 'c' as cell_id, "
            "'s' as seed_id, 'p' as problem, 'simple' as complexity, 'm' as generator_model, "
            "'h' as prompt_hash, "
            "0.1 as consensus, 0.5 as consensus_threshold, 0.0 as validator_spread, "
            "[]::struct(model varchar)[] as validator_scores, 0 as validators_skipped, '{}' as example_json, "
            "'k' as dedup_key, '1' as spec_version, '2026-01-01' as validated_at"
        )
    proc = subprocess.run(
        [
            DBT_EXECUTABLE,
            "build",
            "--select",
            "stg_validated_examples",
            "consensus_meets_threshold",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(tmp_path / "target"),
        ],
        env={**os.environ, "SYNTH_DUCKDB_PATH": str(db)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "consensus_meets_threshold" in proc.stdout and "FAIL 1" in proc.stdout


# Here, not in test_assets.py: it may parse the dbt project into dbt_quality/target, and the suite's
# parallel workers keep one file's tests together (--dist loadfile), so no two dbt parses race.
def test_dbt_code_location_loads() -> None:
    from synth_pipelines.dbt_definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert any("sft_training" in k for k in keys) and any("domain_quality_summary" in k for k in keys)
