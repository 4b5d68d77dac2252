"""Shards of a domain's generation and validation (issue 26): each item's shard follows from its
id, the rows are the same whatever the shard count, and a failed shard leaves the others' work for
the rerun."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from synth_pipelines.generation.generate_rows import GenerationShard, iter_plan_items, shard_items
from synth_pipelines.generation.matrix import build_matrix
from synth_pipelines.generation.seeds import build_seed_problems
from synth_pipelines.llm.factory import build_client
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.validation.apply_gates import (
    JudgedCandidates,
    finish_validation,
    judge_candidates,
    restore_screening,
    rows_digest,
    screen_candidates,
    screen_examples,
    validate_examples,
)
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.materialize import DOMAIN, materialize_domain, up_to
from tests.scripted import ScriptedBackend, scripted_profile


def _plan_ids(schemas_dir: Path, target: int) -> list[str]:
    spec = load_spec(schemas_dir / f"{DOMAIN}.yaml").spec
    seeds, _ = build_seed_problems(spec, None)
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=target)
    return [item.example_id for item in iter_plan_items(cells, seeds, DOMAIN)]


@pytest.mark.parametrize("of", [1, 2, 3, 7])
def test_shards_split_the_plan_into_disjoint_parts_that_cover_it(schemas_dir: Path, of: int) -> None:
    spec = load_spec(schemas_dir / f"{DOMAIN}.yaml").spec
    seeds, _ = build_seed_problems(spec, None)
    cells = build_matrix(spec, [(s.seed_id, s.problem) for s in seeds], target_count=60)
    everything = [i.example_id for i in iter_plan_items(cells, seeds, DOMAIN)]
    parts = [
        [
            i.example_id
            for i in shard_items(iter_plan_items(cells, seeds, DOMAIN), GenerationShard(index=k, of=of))
        ]
        for k in range(of)
    ]
    joined = [example_id for part in parts for example_id in part]
    assert sorted(joined) == sorted(everything)  # every item, each once
    assert len(set(joined)) == len(everything) == 60
    if of > 1:
        # Hashing spreads items like fair dice: every shard within 4 sigma of its share, none empty.
        share, sigma = 60 / of, (60 * (1 / of) * (1 - 1 / of)) ** 0.5
        assert all(len(p) > 0 and abs(len(p) - share) <= 4 * sigma for p in parts), [len(p) for p in parts]


def test_an_items_shard_depends_on_its_id_alone() -> None:
    shard = GenerationShard(index=1, of=3)
    assert [shard.holds(f"ex-{n}") for n in range(50)] == [shard.holds(f"ex-{n}") for n in range(50)]
    # Which of three shards holds an id does not depend on which other ids exist.
    held = {n for n in range(50) if shard.holds(f"ex-{n}")}
    assert held == {n for n in range(50) if GenerationShard(index=1, of=3).holds(f"ex-{n}")}
    assert GenerationShard(index=0, of=1).holds("anything")


def _rows(warehouse: Path) -> list[tuple]:
    glob = f"{warehouse}/raw_generations/*/*.parquet"
    return duckdb.sql(
        f"select example_id, status, example_json, error, generator_model, seed, prompt_hash "
        f"from read_parquet('{glob}', hive_partitioning=true) order by example_id"
    ).fetchall()


def _meta(result: dg.ExecuteInJobResult, key: str = "raw_generations") -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == key:
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"no materialization of {key}")


def test_three_shards_make_the_same_rows_as_one(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    one = materialize_domain(up_to("raw_generations"), tmp_path / "one", scripted_schemas_dir, target=12)
    three = materialize_domain(
        up_to("raw_generations"),
        tmp_path / "three",
        scripted_schemas_dir,
        target=12,
        op_config={"raw_generations": {"shards": 3}},
    )
    rows = _rows(tmp_path / "one")
    assert len(rows) == 12 and _rows(tmp_path / "three") == rows
    steps = {e.step_key for e in three.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {f"raw_generations.generate_shard[shard_{k}]" for k in range(3)} <= steps
    meta, single = _meta(three), _meta(one)
    assert (meta["shards"], meta["rows"], meta["planned"], meta["generated_now"]) == (3, 12, 12, 12)
    assert single["shards"] == 1
    # Usage of the three shards is summed into the partition's figures like one client's.
    assert meta["model_calls"] == single["model_calls"] == 12


def test_a_failed_shard_keeps_the_others_rows_and_the_rerun_calls_only_for_its_items(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module = importlib.import_module("synth_pipelines.assets.raw_generations")

    broken = GenerationShard(index=1, of=3)
    in_broken = [i for i in _plan_ids(scripted_schemas_dir, 12) if broken.holds(i)]
    assert 1 < len(in_broken) < 12
    original = module.generate_examples
    outage = {"on": True}

    def one_row_then_an_outage(spec, items, client, sink, **kwargs):  # type: ignore[no-untyped-def]
        items = list(items)
        if outage["on"] and broken.holds(items[0].example_id):
            original(spec, items[:1], client, sink, planned=1)
            raise ProviderError("smollm2-135m", "HTTP 503: the provider went down", kind="http")
        return original(spec, items, client, sink, **kwargs)

    monkeypatch.setattr(module, "generate_examples", one_row_then_an_outage)
    warehouse, config = tmp_path / "wh", {"raw_generations": {"shards": 3}}
    first = materialize_domain(
        up_to("raw_generations"), warehouse, scripted_schemas_dir, target=12, op_config=config,
        raise_on_error=False,
    )  # fmt: skip
    assert not first.success
    failed = [e.step_key for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed == ["raw_generations.generate_shard[shard_1]"]
    assert "went down" in str(first.all_events) and not list(warehouse.glob("raw_generations/*/*.parquet"))
    generator_calls = sum(b.calls for b in scripted_backends.values())
    assert generator_calls == 12 - len(in_broken) + 1  # two healthy shards and one row of the third

    outage["on"] = False
    again = materialize_domain(
        up_to("raw_generations"), warehouse, scripted_schemas_dir, target=12, op_config=config
    )
    assert again.success
    after = sum(b.calls for b in scripted_backends.values())
    assert after - generator_calls == len(in_broken) - 1  # only the broken shard's missing items
    meta = _meta(again)
    assert (meta["rows"], meta["resumed"], meta["generated_now"]) == (
        12,
        12 - len(in_broken) + 1,
        len(in_broken) - 1,
    )
    reference = materialize_domain(
        up_to("raw_generations"), tmp_path / "ref", scripted_schemas_dir, target=12
    )
    assert reference.success and _rows(warehouse) == _rows(tmp_path / "ref")


def test_shards_share_the_runs_budget(tmp_path: Path, scripted_schemas_dir: Path, scripted_backends) -> None:
    """Shards run at once with no ledger between them: each spends its share, so the sum stays
    within the budget (one shard with the whole budget each would spend three times it)."""
    from synth_pipelines.resources import LLMResource

    result = materialize_domain(
        up_to("raw_generations"),
        tmp_path / "wh",
        scripted_schemas_dir,
        llm=LLMResource(profile="local", budget_tokens=600),
        target=24,
        op_config={"raw_generations": {"shards": 3, "allow_partial": True}},
    )
    meta = _meta(result)
    assert "budget of 200 tokens" in meta["stopped_reason"]
    assert 0 < meta["rows"] < 24
    # With the whole budget each, every shard would stop only past 600 tokens: 1,800 or more in all
    # (24 rows hold about 2,400). Calls in flight when a share runs out still finish and are billed.
    assert meta["billed_tokens"] < 3 * 600


# --- validation in shards -------------------------------------------------------------------------

API_SPEC = Path(__file__).resolve().parent.parent / "schemas" / "api_development.yaml"
TASKS = [
    ("Remove the expired token of user {n}", "DELETE", "/users/{{id}}/tokens/{{token}}", "delete"),
    ("List the open invoices of customer {n}", "GET", "/customers/{{id}}/invoices", "read"),
    ("Create a webhook for order events of shop {n}", "POST", "/shops/{{id}}/webhooks", "create"),
]


def _validation_raw(n: int) -> pa.Table:
    """``n`` raw rows: every fifth repeats an earlier row of its task (an exact duplicate whose first
    copy may sit in another shard); every seventh uses a method its operation forbids (SQL rules)."""
    rows = []
    for i in range(n):
        task, method, endpoint, operation = TASKS[i % 3]
        number = 0 if i % 5 == 0 else i
        rows.append(
            {
                "example_id": f"e{i}",
                "status": "ok",
                "problem": task.format(n="N"),
                "conditions_json": json.dumps({"operation": operation}),
                "complexity": "simple",
                "example_json": json.dumps(
                    {
                        "task": task.format(n=number),
                        "method": "PUT" if i % 7 == 3 else method,
                        "endpoint": endpoint.format(),
                        "explanation": f"Calls {endpoint.format()} with {method} for case {number}.",
                    }
                ),
            }
        )
    return pa.Table.from_pylist(rows, schema=RAW_GENERATIONS)


def _without_clock(table: pa.Table) -> list[dict]:
    return sorted(table.drop_columns(["validated_at"]).to_pylist(), key=lambda r: r["example_id"])


def test_judging_in_shards_gives_exactly_the_outcome_of_one_pass() -> None:
    spec = load_spec(API_SPEC).spec.with_panel(0.5, "p", field_agreement=-1.0)[0]
    profile = scripted_profile()
    validators = list(profile.roles.validators)

    def client():  # type: ignore[no-untyped-def]
        built = build_client(profile, None)
        built.backends.update({name: ScriptedBackend(name) for name in profile.models})  # random scores
        return built

    raw = _validation_raw(40)
    single = validate_examples(spec, raw, client(), validators, early_stop=False)
    screening = screen_examples(spec, raw)
    assert 0 < len(screening.candidates) < 40 and {"dedup", "rules"} <= set(filter(None, screening.stage))
    ids, texts = screening.cols["example_id"], screening.cols["example_json"]
    parts = []
    for k in range(3):  # what each judge_shard step does with what plan_validation_shards gave it
        shard = GenerationShard(index=k, of=3)
        mine = [i for i in screening.candidates if shard.holds(ids[i])]
        assert mine  # each shard judges some candidates
        digest = rows_digest([ids[i] for i in mine], [texts[i] for i in mine])
        own = screen_candidates(spec, raw, [ids[i] for i in mine], digest)
        assert own.examples == [screening.examples[i] for i in mine]  # parsed again, the same
        parts.append(judge_candidates(spec, own, client(), validators, early_stop=False))
    # publish_validation: the screening restored from its verdicts (only the examples parsed again).
    restored = restore_screening(spec, raw, screening.verdicts())
    sharded = finish_validation(spec, raw, restored, JudgedCandidates.merged(parts))
    assert single.accepted.num_rows > 0 and single.stage_counts["consensus"] > 0
    assert _without_clock(sharded.accepted) == _without_clock(single.accepted)
    assert _without_clock(sharded.rejected) == _without_clock(single.rejected)
    # A shard's verdicts missing at publish is an error, never rows silently accepted or dropped.
    with pytest.raises(ValueError, match="neither a verdict"):
        finish_validation(spec, raw, restored, JudgedCandidates.merged(parts[:2]))
    # raw_generations rematerialized between the steps (same ids, other text): refused by both.
    changed = _validation_raw(40).set_column(
        RAW_GENERATIONS.get_field_index("example_json"),
        "example_json",
        pa.array([t.replace("case", "instance") for t in texts], pa.string()),
    )
    with pytest.raises(ValueError, match="raw_generations changed"):
        restore_screening(spec, changed, screening.verdicts())
    first = [i for i in screening.candidates if GenerationShard(index=0, of=3).holds(ids[i])]
    with pytest.raises(ValueError, match="raw_generations changed"):
        screen_candidates(spec, changed, [ids[i] for i in first],
                          rows_digest([ids[i] for i in first], [texts[i] for i in first]))  # fmt: skip


def _validated(warehouse: Path) -> list[tuple]:
    glob = f"{warehouse}/validated_examples/*/*.parquet"
    return duckdb.sql(
        f"select example_id, example_json, consensus, validator_scores, replaced_example_ids "
        f"from read_parquet('{glob}', hive_partitioning=true) order by example_id"
    ).fetchall()


def test_a_domain_validated_in_three_shards_matches_one_and_a_failed_shard_reruns_only_its_calls(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module = importlib.import_module("synth_pipelines.assets.validated_examples")
    assets = up_to("validated_examples")
    one = materialize_domain(assets, tmp_path / "one", scripted_schemas_dir, target=12,
                             op_config={"validated_examples": {"early_stop": False}})  # fmt: skip
    broken = GenerationShard(index=1, of=3)
    original = module.judge_candidates
    outage = {"on": True, "judged": 0}

    def one_verdict_then_an_outage(spec, screening, client, judges, **kwargs):  # type: ignore[no-untyped-def]
        ids = screening.candidate_ids()
        if outage["on"] and ids and broken.holds(ids[0]):
            screening.candidates = screening.candidates[:1]
            outage["judged"] = len(ids)
            original(spec, screening, client, judges, **kwargs)
            raise ProviderError("smollm2-135m", "HTTP 503: the judges went down", kind="http")
        return original(spec, screening, client, judges, **kwargs)

    monkeypatch.setattr(module, "judge_candidates", one_verdict_then_an_outage)
    warehouse, config = tmp_path / "three", {"validated_examples": {"shards": 3, "early_stop": False}}
    first = materialize_domain(assets, warehouse, scripted_schemas_dir, target=12, op_config=config,
                               raise_on_error=False)  # fmt: skip
    assert not first.success and outage["judged"] > 1
    failed = [e.step_key for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed == ["validated_examples.judge_shard[shard_1]"]
    assert not list(warehouse.glob("validated_examples/*/*.parquet"))  # nothing half-published
    before = sum(b.calls for b in scripted_backends.values())

    outage["on"] = False
    again = materialize_domain(assets, warehouse, scripted_schemas_dir, target=12, op_config=config)
    judge_calls = sum(b.calls for b in scripted_backends.values()) - before
    # Generation and the healthy shards' verdicts come from the response cache: the rerun pays two
    # judges for each of the broken shard's candidates but the one it had judged.
    assert judge_calls == 2 * (outage["judged"] - 1)
    steps = {e.step_key for e in again.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {f"validated_examples.judge_shard[shard_{k}]" for k in range(3)} <= steps
    meta, single = _meta(again, "validated_examples"), _meta(one, "validated_examples")
    assert meta["shards"] == 3 and single["shards"] == 1
    assert meta["rows"] == single["rows"] > 0 and meta["input_rows"] == 12
    assert _validated(warehouse) == _validated(tmp_path / "one")


def test_a_sharded_assets_seconds_span_its_steps_in_the_run_report() -> None:
    """``synth generate --report`` and bench-scale read per-asset seconds: a graph-backed asset's
    steps count as the asset, from the first start to the last end (shards overlap)."""
    from types import SimpleNamespace

    from synth_pipelines.runner import step_seconds

    stats = [
        ("raw_generations.plan_generation_shards", 10.0, 10.5),
        ("raw_generations.generate_shard[shard_0]", 10.5, 20.0),
        ("raw_generations.generate_shard[shard_1]", 10.6, 25.0),
        ("raw_generations.publish_generations", 25.0, 26.0),
        ("validated_examples_schema_compliance", 40.0, 41.5),
        ("example_embeddings", 30.0, None),  # still running: no end, left out
    ]
    instance = SimpleNamespace(
        get_run_step_stats=lambda run_id: [
            SimpleNamespace(step_key=k, start_time=s, end_time=e) for k, s, e in stats
        ]
    )
    seconds = step_seconds(instance, SimpleNamespace(run_id="r"))  # type: ignore[arg-type]
    assert seconds == {"raw_generations": 16.0, "validated_examples_schema_compliance": 1.5}


def test_the_shard_steps_values_land_in_the_state_folder(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    """What shard steps hand each other is pickled under the warehouse's state folder (shared by
    every worker), not in a machine's local instance storage; the code location binds it so."""
    from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
    from synth_pipelines.resources.settings import default_resources
    from synth_pipelines.resources.step_outputs import StepOutputsIOManager

    bound = default_resources()
    assert isinstance(bound["io_manager"], StepOutputsIOManager)
    assert bound["io_manager"].warehouse is bound["warehouse"]

    warehouse = WarehouseResource(root=str(tmp_path / "wh"), schemas_dir=str(scripted_schemas_dir))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("domain", [DOMAIN])
    result = dg.materialize(
        up_to("raw_generations"),
        partition_key=DOMAIN,
        instance=instance,
        resources={
            "warehouse": warehouse,
            "llm": LLMResource(profile="local"),
            "embedder": EmbedderResource(),
            "io_manager": StepOutputsIOManager(warehouse=warehouse),
        },
        run_config={"ops": {"raw_generations": {"config": {"shards": 2}}}},
    )
    assert result.success
    handed = tmp_path / "wh" / "step_outputs" / result.run_id
    assert {p.parent.name for p in handed.rglob("result")} == {
        "raw_generations.plan_generation_shards",  # the shard descriptions
        "raw_generations.generate_shard[shard_0]",  # the shards' reports
        "raw_generations.generate_shard[shard_1]",
    }


def test_a_distributed_run_starts_the_gates_before_the_warnings() -> None:
    """Among the steps ready after validated_examples, the blocking checks (which hold the
    downstream assets back) are submitted before the warnings, in the order dagster-celery and the
    multiprocess executor use (the higher tag first), and on the same Redis priority list."""
    from dagster_celery.core_execution_loop import DAGSTER_CELERY_STEP_PRIORITY_TAG

    from synth_pipelines.assets.checks import QUALITY_CHECKS

    checks = [c for c in QUALITY_CHECKS if next(iter(c.check_specs)).asset_key.path == ["validated_examples"]]
    default = 5  # dagster-celery's task_default_priority

    def priority(check: dg.AssetChecksDefinition) -> int:
        return int(check.node_def.tags.get(DAGSTER_CELERY_STEP_PRIORITY_TAG, default))

    def dagster_priority(check: dg.AssetChecksDefinition) -> int:
        return int(check.node_def.tags.get("dagster/priority", 0))

    submitted = sorted(checks, key=lambda c: -priority(c))
    blocking = [next(iter(c.check_specs)).blocking for c in submitted]
    assert blocking == sorted(blocking, reverse=True) and blocking.count(False) == 3
    assert all(priority(c) // 3 == default // 3 for c in checks)  # one Redis list (0-2, 3-5, ...)
    gates = [c for c in checks if next(iter(c.check_specs)).blocking]
    warnings = [c for c in checks if not next(iter(c.check_specs)).blocking]
    assert min(map(dagster_priority, gates)) > max(map(dagster_priority, warnings))
