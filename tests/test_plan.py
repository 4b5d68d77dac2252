"""``synth plan``: the forecast of a run, compared with the run itself on the fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth_pipelines.planning.forecast import Plan, plan_domain, save_plan
from synth_pipelines.resources import LLMResource
from synth_pipelines.spec.loading import load_spec, spec_path_for
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.storage import Warehouse
from synth_pipelines.warehouse.usage import usage_history
from tests.materialize import DOMAIN, materialize_domain, up_to
from tests.test_openai_compat import profile_file

LLM_ASSETS = ("seed_problems", "problem_matrix", "raw_generations", "validated_examples", "compiled_program")


def _plan(schemas: Path, wh: Warehouse, profile: Path, count: int, domain: str = DOMAIN) -> Plan:
    spec = load_spec(spec_path_for(schemas, domain)).spec
    client = LLMResource(profile=str(profile)).client(wh.cache_path)
    return plan_domain(spec, wh, client, target_count=count)


def _priced(profile: Path) -> Path:
    """The second judge 20x dearer than the first: planned dollars must follow how the calls split
    over the panel (early stops call the second judge less), not an even split."""
    import yaml

    data = yaml.safe_load(profile.read_text())
    data["models"]["remote-b"].update(input_price_per_mtok=20.0, output_price_per_mtok=80.0)
    profile.write_text(yaml.safe_dump(data))
    return profile


def _run_spend(wh: Warehouse, run_id: str, domain: str = DOMAIN) -> tuple[int, float, int]:
    table = wh.read_dataset("llm_usage", domain=domain)
    assert table is not None
    rows = [r for r in table.to_pylist() if r["run_id"] == run_id]
    return (
        sum(r["model_calls"] for r in rows),
        sum(r["cost_usd"] for r in rows),
        sum(r["billed_tokens"] for r in rows),
    )


def test_plan_is_within_ten_percent_of_the_run_it_forecasts(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    wh = Warehouse(tmp_path / "warehouse")
    with FakeOpenAIServer(FaultPlan(latency_s=0.005)) as server:
        profile = _priced(profile_file(tmp_path, server.base_url))
        # A first run of 12 items: the history the plan calibrates judges and tokens on.
        first = materialize_domain(
            up_to("compiled_program"), wh.root, scripted_schemas_dir, llm=str(profile), target=12
        )
        assert first.success
        first_validation = next(
            r
            for rs in usage_history(wh, DOMAIN, last=1).values()
            for r in rs
            if r.asset == "validated_examples"
        )
        plan = _plan(scripted_schemas_dir, wh, profile, 36)
        save_plan(wh, plan)
        lines = {a.asset: a for a in plan.assets}
        # The 12 items of the first run are cached: only the 24 new ones cost anything.
        assert (lines["raw_generations"].units, lines["raw_generations"].cached_units) == (36, 12)
        assert lines["raw_generations"].calls == 24
        assert "history" in lines["validated_examples"].basis
        before = server.stats.requests
        second = materialize_domain(
            up_to("compiled_program"), wh.root, scripted_schemas_dir, llm=str(profile), target=36
        )
        assert second.success
        served = server.stats.requests - before
    calls, dollars, tokens = _run_spend(wh, second.run_id)
    assert calls == served  # what the run recorded is what the server answered
    assert abs(plan.calls - calls) <= 0.10 * calls, (plan.calls, calls, plan.assets)
    assert abs(plan.tokens - tokens) <= 0.10 * tokens, (plan.tokens, tokens)
    # The run recorded how close the saved plan came, per asset.
    recorded = {r.asset: r for r in usage_history(wh, DOMAIN, last=1).values() for r in r}
    # Dollars: the single-model assets within 10%. The panel's dollars depend on how often the
    # 20x dearer second judge is called, a draw of the fake server's random scores (12 history
    # rows cannot pin it to 10%); what the plan must do is split its calls as the history did,
    # not evenly.
    for asset in ("raw_generations", "compiled_program"):
        r = recorded[asset]
        assert abs(r.planned_cost_usd - r.cost_usd) <= 0.10 * r.cost_usd, (asset, r)
    history_b = json.loads(first_validation.calls_by_model).get("remote-b", 0) / first_validation.model_calls
    assert 0 < history_b < 0.5  # the early stops called the dear judge on some rows only
    # The panel's planned dollars per call follow the history's split, not an even split: at the
    # fake server's 20 prompt and ~30 completion tokens, remote-a costs ~$0.00014 a call and the
    # 20x dearer remote-b ~$0.0028, so an even split would plan ~$0.0015 a call.
    per_call = lines["validated_examples"].cost_usd / lines["validated_examples"].calls
    history_per_call = first_validation.cost_usd / first_validation.model_calls
    assert abs(per_call - history_per_call) <= 0.5 * history_per_call, (per_call, history_per_call)
    assert per_call < 0.0015 * 0.6
    assert dollars > 0
    assert recorded["raw_generations"].planned_calls == 24
    assert recorded["raw_generations"].model_calls == 24
    meta = {
        e.materialization.asset_key.path[-1]: e.materialization.metadata
        for e in second.get_asset_materialization_events()
    }
    assert meta["validated_examples"]["planned_model_calls"].value == lines["validated_examples"].calls
    assert "plan_calls_error_pct" in meta["raw_generations"]


def test_a_fully_cached_rerun_is_planned_at_zero(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    wh = Warehouse(tmp_path / "warehouse")
    with FakeOpenAIServer() as server:
        profile = profile_file(tmp_path, server.base_url)
        fresh = _plan(scripted_schemas_dir, wh, profile, 6)
        assert "priors" in fresh.assets[-1].basis
        # No history: every judge on every row, one call per item.
        lines = {a.asset: a for a in fresh.assets}
        assert lines["raw_generations"].calls == 6
        assert lines["validated_examples"].calls == 6 * 2
        assert lines["endpoint_checks"].calls == 2
        assert fresh.cost_usd > 0
        assert materialize_domain(
            up_to("compiled_program"), wh.root, scripted_schemas_dir, llm=str(profile), target=6
        ).success
        again = _plan(scripted_schemas_dir, wh, profile, 6)
        assert again.calls == 0 and again.cost_usd == 0
        before = server.stats.requests
        assert materialize_domain(
            up_to("compiled_program"), wh.root, scripted_schemas_dir, llm=str(profile), target=6
        ).success
        assert server.stats.requests == before


def test_generated_seeds_and_technique_rows_are_looked_up(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data_analysis has techniques: derivation requests are rebuilt and found in the cache."""
    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    wh = Warehouse(tmp_path / "warehouse")
    domain = "data_analysis"
    with FakeOpenAIServer() as server:
        profile = profile_file(tmp_path, server.base_url)
        before = _plan(scripted_schemas_dir, wh, profile, 12, domain)
        matrix = {a.asset: a for a in before.assets}["problem_matrix"]
        assert matrix.units > 0 and matrix.cached_units == 0 and matrix.calls == matrix.units
        result = materialize_domain(
            up_to("raw_generations"),
            wh.root,
            scripted_schemas_dir,
            llm=str(profile),
            target=12,
            domain=domain,
        )
        assert result.success
        after = {a.asset: a for a in _plan(scripted_schemas_dir, wh, profile, 12, domain).assets}
    assert after["problem_matrix"].calls == 0 and after["problem_matrix"].cached_units == matrix.units
    assert after["raw_generations"].calls == 0 and after["raw_generations"].cached_units == 12


def test_plan_command_and_the_dry_run_job(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`synth plan --json` and the synth_plan job's generation_plan asset make the same forecast,
    save it, and call no model."""
    import json

    import dagster as dg
    from typer.testing import CliRunner

    from synth_pipelines.assets.generation_plan import generation_plan
    from synth_pipelines.cli import app
    from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
    from synth_pipelines.resources import WarehouseResource

    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    wh = Warehouse(tmp_path / "warehouse")
    with FakeOpenAIServer() as server:
        profile = profile_file(tmp_path, server.base_url)
        result = CliRunner().invoke(
            app,
            [
                *("plan", "--domain", DOMAIN, "--count", "10", "--json", "--profile", str(profile)),
                *("--schemas", str(scripted_schemas_dir), "--warehouse", str(wh.root)),
            ],
        )
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output)
        by_asset = {a["asset"]: a["calls"] for a in printed["assets"]}
        # Both endpoints are unchecked in a fresh state folder: one check request each, planned.
        assert by_asset["endpoint_checks"] == 2
        assert printed["totals"]["calls"] == 2 + 10 + 10 * 2 + by_asset["compiled_program"]
        assert json.loads((wh.root / f"plans/domain={DOMAIN}/plan.json").read_text())["target_count"] == 10
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [DOMAIN])
        run = dg.materialize(
            [generation_plan],
            partition_key=DOMAIN,
            instance=instance,
            resources={
                "warehouse": WarehouseResource(root=str(wh.root), schemas_dir=str(scripted_schemas_dir)),
                "llm": LLMResource(profile=str(profile)),
            },
            run_config={"ops": {"generation_plan": {"config": {"target_count": 10}}}},
        )
        assert run.success
        assert server.stats.requests == 0  # a dry run
    meta = run.get_asset_materialization_events()[0].materialization.metadata
    assert meta["planned_model_calls"].value == printed["totals"]["calls"]
    assert meta["planned_cost_usd"].value == pytest.approx(printed["totals"]["cost_usd"], abs=1e-6)
    # A statistical domain: one scenario-naming call.
    spec = load_spec(spec_path_for(scripted_schemas_dir, "service_traffic")).spec
    client = LLMResource(profile=str(profile)).client(wh.cache_path)
    lines = plan_domain(spec, wh, client).assets
    assert [(a.asset, a.calls) for a in lines] == [("endpoint_checks", 1), ("statistical_data", 1)]


def test_items_in_the_in_flight_parts_are_planned_as_resumed(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run's finished items are skipped by the rerun: the plan counts them as free. An item
    that got no answer from the provider is asked again, so it still costs a call."""
    from synth_pipelines.generation.generate_rows import RawGeneration
    from synth_pipelines.warehouse.inflight import InflightRows
    from synth_pipelines.warehouse.tables import RAW_GENERATIONS

    monkeypatch.setenv("SYNTH_OPENAI_API_KEY", "sk-test")
    wh = Warehouse(tmp_path / "warehouse")
    with FakeOpenAIServer() as server:
        profile = profile_file(tmp_path, server.base_url)
        before = {a.asset: a for a in _plan(scripted_schemas_dir, wh, profile, 8).assets}
        assert before["raw_generations"].calls == 8
        assert materialize_domain(
            up_to("problem_matrix"), wh.root, scripted_schemas_dir, llm=str(profile), target=8
        ).success
        matrix = wh.read_partition("problem_matrix", DOMAIN)
        assert matrix is not None
        cell, other = [r for r in matrix.to_pylist() if r["target"] > 0][:2]
        sink = InflightRows(wh.inflight_dir("raw_generations", DOMAIN), RAW_GENERATIONS)
        for eid, status, kind in (
            (f"{cell['cell_id']}_0000", "ok", None),
            (f"{other['cell_id']}_0000", "failed", "provider"),
        ):
            sink.add(
                RawGeneration(
                    example_id=eid, cell_id=cell["cell_id"], seed_id=cell["seed_id"], problem="p",
                    complexity=cell["complexity"], conditions_json=cell["conditions_json"], status=status,
                    example_json="{}" if status == "ok" else None, error=None, failure_kind=kind,
                    raw_text=None, generator_model="remote-a", prompt_hash="h", temperature=0.7, seed=1,
                    prompt_tokens=1, completion_tokens=1, cost_usd=0.0, latency_s=0.0, attempt=1,
                    cache_hit=False, created_at="t",
                ).model_dump()
            )  # fmt: skip
        sink.flush()
        after = {a.asset: a for a in _plan(scripted_schemas_dir, wh, profile, 8).assets}
    assert after["raw_generations"].calls == 7 and after["raw_generations"].cached_units == 1
    assert "1 resumed from parts" in after["raw_generations"].basis
