"""Tiers 1, 3 and 5: definitions load, assets run on a scripted provider, the spec sensor."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from synth_pipelines.assets import PIPELINE_ASSETS, domain_schema
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.sensors import domain_spec_sensor, plan_spec_runs
from synth_pipelines.spec.loading import discover_specs


def resources(warehouse_root: Path, schemas_dir: Path) -> dict:
    return {
        "warehouse": WarehouseResource(root=str(warehouse_root), schemas_dir=str(schemas_dir)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }


def test_definitions_load() -> None:
    from synth_pipelines.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys >= {
        "domain_schema",
        "seed_problems",
        "problem_matrix",
        "raw_generations",
        "validated_examples",
        "example_embeddings",
        "compiled_program",
        "sft_export",
        "dpo_export",
        "qa_export",
        "grpo_export",
    }
    assert defs.resolve_job_def("synth_domain") is not None
    assert defs.resolve_sensor_def("domain_spec_sensor") is not None


def test_definitions_import_stays_light() -> None:
    """Every pipeline run imports the code location: dbt, DSPy, torch and GE load only in the step
    that uses them (dbt not at all: it is a code location of its own)."""
    import subprocess
    import sys

    heavy = ("dagster_dbt", "dbt", "dspy", "litellm", "torch", "sentence_transformers", "great_expectations")
    script = (
        f"import sys, synth_pipelines.definitions\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_every_asset_has_a_docstring() -> None:
    for a in PIPELINE_ASSETS:
        assert (a.descriptions_by_key[a.key] or "").strip(), a.key


def test_domain_schema_direct_invocation(warehouse_root: Path, schemas_dir: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, ["api_development"])
    ctx = dg.build_asset_context(partition_key="api_development", instance=instance)
    result = domain_schema(
        ctx,
        warehouse=WarehouseResource(root=str(warehouse_root), schemas_dir=str(schemas_dir)),
        llm=LLMResource(profile="local"),
    )
    # The file's SHA-256, then the consensus and diversity thresholds the local profile resolved.
    assert result.data_version is not None
    file_hash, consensus, diversity = result.data_version.value.split(":")
    assert len(file_hash) == 64 and (float(consensus), float(diversity)) == (0.0, 0.3)
    stored = json.loads((warehouse_root / "domain_schema/domain=api_development/spec.json").read_text())
    assert stored["spec"]["domain"] == "api_development"
    assert stored["example_json_schema"]["properties"]["task"]["maxLength"] == 120


def _failed_step_message(result: dg.ExecuteInJobResult) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            return (data.user_failure_data.description if data.user_failure_data else "") or str(data.error)
    return ""


@pytest.mark.parametrize("case", ["unknown_type", "malformed_yaml", "unsafe_domain"])
def test_bad_spec_fails_with_clear_error_and_nothing_downstream(
    case: str, warehouse_root: Path, schemas_dir: Path, scripted_backends
) -> None:
    domain = "api_development"
    spec_file = schemas_dir / f"{domain}.yaml"
    if case == "unknown_type":
        data = yaml.safe_load(spec_file.read_text())
        data["fields"]["method"]["type"] = "http_verb"
        spec_file.write_text(yaml.safe_dump(data))
        expected = ["fields.method.type", "'http_verb'", str(spec_file)]
    elif case == "malformed_yaml":
        spec_file.write_text("name: [oops\n")
        expected = ["malformed YAML", str(spec_file)]
    else:
        data = yaml.safe_load(spec_file.read_text())
        data["domain"] = "Api Development!"
        spec_file.write_text(yaml.safe_dump(data))
        expected = ["unsafe domain name", "Api Development!"]
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_domain(
        domain, instance=instance, target_count=4, resources=resources(warehouse_root, schemas_dir)
    )
    assert not result.success
    message = _failed_step_message(result)
    for fragment in expected:
        assert fragment in message, message
    assert [e.asset_key for e in result.get_asset_materialization_events()] == []
    assert not (warehouse_root / "seed_problems").exists()
    assert sum(b.calls for b in scripted_backends.values()) == 0  # fails before any model call


def test_unsafe_partition_key_rejected(warehouse_root: Path, schemas_dir: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, ["../../etc"])
    ctx = dg.build_asset_context(partition_key="../../etc", instance=instance)
    with pytest.raises(dg.Failure, match="unsafe domain name"):
        domain_schema(
            ctx,
            warehouse=WarehouseResource(root=str(warehouse_root), schemas_dir=str(schemas_dir)),
            llm=LLMResource(profile="local"),
        )


def test_full_graph_on_scripted_provider(
    warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    """The whole graph with a scripted provider and the real embedder; re-runs replace, never duplicate."""
    instance = dg.DagsterInstance.ephemeral()
    res = resources(warehouse_root, scripted_schemas_dir)
    result = materialize_domain("api_development", instance=instance, target_count=8, resources=res)
    assert result.success, _failed_step_message(result)
    mats = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(mats) == {a.key.to_user_string() for a in PIPELINE_ASSETS}
    assert mats["raw_generations"]["rows"].value == 8
    assert mats["validated_examples"]["rows"].value >= 2
    assert "preview" in mats["validated_examples"] and "consensus_histogram" in mats["validated_examples"]
    glob = f"{warehouse_root}/validated_examples/*/*.parquet"
    rows = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    cols = [
        d[0] for d in duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)").description
    ]
    for col in ("example_id", "generator_model", "prompt_hash", "consensus", "validator_scores", "domain"):
        assert col in cols
    assert (warehouse_root / "programs/domain=api_development/program.json").is_file()
    state = json.loads((warehouse_root / "programs/domain=api_development/program.json").read_text())
    assert "predict" in state
    calls_first = sum(b.calls for b in scripted_backends.values())

    again = materialize_domain("api_development", instance=instance, target_count=8, resources=res)
    assert again.success
    assert sum(b.calls for b in scripted_backends.values()) == calls_first  # all cached: zero model calls
    rows_again = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true)").fetchall()
    assert len(rows_again) == len(rows)  # replaced, not duplicated
    with duckdb.connect(str(warehouse_root / "synth.duckdb"), read_only=True) as conn:
        assert conn.execute("select count(*) from validated_examples").fetchone()[0] == len(rows)
        emb_type = conn.execute("select typeof(embedding) from example_embeddings limit 1").fetchone()[0]
        assert emb_type == "FLOAT[384]"
        perf = conn.execute("select domain, source, n from agent_performance").fetchall()
        assert len(perf) == 2 and perf[0][:2] == ("api_development", "compiled_program")


def test_killed_generation_resumes_without_repeating_calls(
    warehouse_root: Path, schemas_dir: Path, scripted_backends
) -> None:
    """A run that dies mid-generation keeps its flushed rows; the rerun only generates what is missing."""
    from synth_pipelines.generation.generate_rows import generate_examples, iter_plan_items
    from synth_pipelines.generation.matrix import build_matrix
    from synth_pipelines.generation.seeds import build_seed_problems
    from synth_pipelines.llm.client import LLMClient
    from synth_pipelines.spec.loading import load_spec
    from synth_pipelines.warehouse.inflight import InflightRows
    from synth_pipelines.warehouse.tables import RAW_GENERATIONS
    from tests.scripted import ScriptedBackend, scripted_profile

    spec = load_spec(schemas_dir / "api_development.yaml").spec
    seeds, _ = build_seed_problems(spec, None)
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=6)
    folder = warehouse_root / "inflight"

    class Killed(Exception):
        pass

    def die_after_three(req, n):
        if n > 3:
            raise Killed()
        return None

    backends = {n: ScriptedBackend(n, die_after_three) for n in ("gen-a", "gen-b", "judge-a", "judge-b")}
    with pytest.raises(Killed):
        generate_examples(
            spec,
            iter_plan_items(cells, seeds, spec.domain),
            LLMClient(scripted_profile(), backends, None),
            InflightRows(folder, RAW_GENERATIONS),
            planned=6,
        )
    kept = InflightRows(folder, RAW_GENERATIONS).read_columns(["example_id"]).num_rows
    assert 1 <= kept <= 3  # every row that finished before the crash was flushed
    # A writer killed mid-flush leaves only a hidden temp file, which is never read.
    (folder / ".part-torn.parquet.tmp").write_bytes(b"PAR1 torn")
    fresh = {n: ScriptedBackend(n) for n in ("gen-a", "gen-b", "judge-a", "judge-b")}
    sink = InflightRows(folder, RAW_GENERATIONS)
    outcome = generate_examples(
        spec,
        iter_plan_items(cells, seeds, spec.domain),
        LLMClient(scripted_profile(), fresh, None),
        sink,
        planned=6,
    )
    assert outcome.resumed == kept and outcome.generated == 6 - kept
    assert fresh["gen-a"].calls == 6 - kept
    ids = sink.read_columns(["example_id"]).column("example_id").to_pylist()
    assert len(ids) == len(set(ids)) == 6


def test_spec_sensor_adds_partitions_and_requests_once(schemas_dir: Path) -> None:
    (schemas_dir / "Bad Name.yaml").write_text("x: 1")
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_sensor_context(
        instance=instance, resources={"warehouse": WarehouseResource(schemas_dir=str(schemas_dir))}
    )
    result = domain_spec_sensor(ctx)
    keys = sorted(r.run_key for r in result.run_requests)
    shipped = sorted(d for d in discover_specs(schemas_dir) if d != "Bad Name")
    assert {"api_development", "data_analysis", "service_traffic", "payment_events"} <= set(shipped)
    assert [k.split(":")[0] for k in keys] == shipped
    jobs = {r.partition_key: r.job_name for r in result.run_requests}
    statistical = {"service_traffic", "payment_events"}
    assert jobs == {d: "synth_statistical" if d in statistical else "synth_domain" for d in shipped}
    assert result.dynamic_partitions_requests[0].partition_keys == shipped
    cursor = result.cursor
    # Same files, next tick: nothing new.
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, shipped)
    ctx2 = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"warehouse": WarehouseResource(schemas_dir=str(schemas_dir))},
    )
    again = domain_spec_sensor(ctx2)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    # Editing a spec triggers exactly that domain, with a new deterministic run key.
    p = schemas_dir / "data_analysis.yaml"
    p.write_text(p.read_text() + "\n# edited\n")
    plan = plan_spec_runs(schemas_dir, set(shipped), json.loads(cursor))
    assert [r.domain for r in plan.runs] == ["data_analysis"]
    assert "Bad Name.yaml" in " ".join(plan.skipped)


def test_budget_stops_generation_cleanly_and_says_so(
    warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    res = resources(warehouse_root, scripted_schemas_dir)
    res["llm"] = LLMResource(profile="local", budget_tokens=300)
    result = materialize_domain(
        "api_development",
        instance=dg.DagsterInstance.ephemeral(),
        target_count=12,
        resources=res,
        op_config={"raw_generations": {"allow_partial": True}},
    )
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    raw = meta["raw_generations"]
    assert "budget of 300 tokens" in raw["stopped_reason"].value
    assert 0 < raw["rows"].value < 12  # kept what it had


def test_full_graph_with_the_shipped_diversity_threshold(
    warehouse_root: Path, schemas_dir: Path, scripted_backends
) -> None:
    """The real gate, not the zeroed fixture: scripted replies draw on a 24-word vocabulary, so their
    diversity (~0.24) is below the shipped threshold (the local profile's calibrated one, as the
    shipped spec says auto), the blocking check fails, and the program is not built on them."""
    import yaml

    from synth_pipelines.llm.config import load_profile
    from synth_pipelines.spec.loading import load_spec
    from synth_pipelines.validation.calibration import resolve_thresholds

    # Random words are off topic by construction: the shipped on-topic gate would stop them before
    # the diversity gate this test is about, so only that gate is turned off here.
    path = schemas_dir / "api_development.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("validation", {})["on_topic_threshold"] = -1.0
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(path).spec
    assert spec.validation.diversity_threshold == "auto"
    threshold = resolve_thresholds(spec, load_profile("local"))[0].validation.min_diversity
    assert threshold > 0
    result = materialize_domain(
        "api_development",
        instance=dg.DagsterInstance.ephemeral(),
        target_count=8,
        resources=resources(warehouse_root, schemas_dir),
    )
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    diversity = checks["embedding_diversity"]
    measured = diversity.metadata["measured"].value
    assert diversity.metadata["threshold"].value == threshold
    assert measured < threshold and not diversity.passed
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "example_embeddings" in materialized and "compiled_program" not in materialized
