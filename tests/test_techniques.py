"""Generation techniques (spec ``techniques``): the planned rows, their lineage columns, the extra
judge criterion of adversarial rows, and the feedback loop preferring adversarial and variation rows
for weak cells. Through the scripted provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import yaml

from synth_pipelines.generation.matrix import build_matrix, feedback_extras
from synth_pipelines.generation.techniques import derivations, plan_technique_rows
from synth_pipelines.spec.loading import load_spec, parse_spec
from synth_pipelines.spec.model import ADVERSARIAL_CRITERION
from synth_pipelines.warehouse.storage import Warehouse
from tests.materialize import DOMAIN, materialize_domain, up_to

TECHNIQUES = {
    "variations": 1,
    "adversarial": 0.25,
    "capabilities": ["pagination limits", "idempotency"],
    "scenario_expansion": ["time", "stakeholders"],
}


def spec_with_techniques(schemas: Path, techniques: dict[str, Any] = TECHNIQUES) -> Path:
    path = schemas / f"{DOMAIN}.yaml"
    data = yaml.safe_load(path.read_text())
    data["techniques"] = techniques
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_plan_spreads_targets_over_techniques_and_keeps_base_ids(schemas_dir: Path) -> None:
    spec = load_spec(spec_with_techniques(schemas_dir)).spec
    base = build_matrix(spec, [("s1", "First seed problem"), ("s2", "Second seed problem")], target_count=48)
    rows = plan_technique_rows(spec, base)
    assert sum(r.target for r in rows) == 48  # techniques share the total, they do not add to it
    by = {t: sum(r.target for r in rows if r.technique == t) for t in {r.technique for r in rows}}
    assert by["adversarial"] == 12  # 25% of 48
    assert set(by) == {"base", "variation", "adversarial", "scenario:time", "scenario:stakeholders"}
    # Every cell keeps exactly one base row, under its own id; technique rows carry a variant tag.
    assert sorted(r.cell_id for r in rows if r.technique == "base") == sorted(c.cell_id for c in base)
    assert all(r.variant == "" for r in rows if r.technique == "base")
    assert {r.variant for r in rows if r.technique != "base"} <= {"v1", "adv", "time", "stakeholders"}
    adversarial = [r for r in rows if r.technique == "adversarial"]
    assert {r.capability for r in adversarial} == {"pagination limits", "idempotency"}
    wanted = derivations(rows, {"s1": "List users", "s2": "Delete an order"})
    assert {d.technique for d in wanted} == {"variation", "adversarial", "scenario"}
    assert all(d.seed in ("List users", "Delete an order") for d in wanted)
    # Without techniques the plan is the base matrix, unchanged.
    plain = parse_spec({**yaml.safe_load((schemas_dir / f"{DOMAIN}.yaml").read_text()), "techniques": {}})
    assert plan_technique_rows(plain, base) == base


def test_weak_cells_get_adversarial_and_variation_rows_first(schemas_dir: Path) -> None:
    spec = load_spec(spec_with_techniques(schemas_dir)).spec
    base = build_matrix(spec, [("s1", "First seed problem")], target_count=24)
    weak = [base[0].cell_id, base[1].cell_id]
    extras = feedback_extras(spec, weak, target_count=24)
    before = {(r.cell_id, r.technique): r.target for r in plan_technique_rows(spec, base)}
    after = plan_technique_rows(spec, base, extras)
    for row in after:
        gained = row.target - before.get((row.cell_id, row.technique), 0)
        if row.cell_id in weak:
            assert row.weak
            if row.technique in ("base", "scenario:time", "scenario:stakeholders"):
                assert gained == 0, row  # extras never go to base or scenario rows here
        else:
            assert gained == 0 and not row.weak
    gained_total = sum(r.target for r in after) - sum(before.values())
    assert gained_total == sum(extras.values()) > 0
    assert any(r.technique == "adversarial" and r.cell_id in weak for r in after)


def test_technique_rows_reach_validated_examples_with_lineage_and_the_judge_criterion(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends: Any
) -> None:
    spec_with_techniques(scripted_schemas_dir)
    warehouse = tmp_path / "warehouse"
    result = materialize_domain(up_to("validated_examples"), warehouse, scripted_schemas_dir, target=24)
    assert result.success
    meta = result.asset_materializations_for_node("problem_matrix")[0].metadata
    by_technique = meta["target_by_technique"].value
    assert by_technique["adversarial"] == 6 and sum(by_technique.values()) == 24
    assert meta["derived_problems"].value >= 1
    wh = Warehouse(warehouse)
    matrix = wh.read_partition("problem_matrix", DOMAIN).to_pylist()
    seeds = {r["problem"] for r in wh.read_partition("seed_problems", DOMAIN).to_pylist()}
    for row in matrix:
        if row["technique"] == "base":
            assert row["problem"] is None and row["parent_problem"] is None
        else:
            assert (
                row["parent_problem"] in seeds and row["problem"] and row["problem"] != row["parent_problem"]
            )
    raw = wh.read_partition("raw_generations", DOMAIN)
    assert sum(raw.column("technique").to_pylist().count(t) for t in ("adversarial",)) == 6
    adv = raw.filter(pc.equal(raw.column("technique"), "adversarial")).to_pylist()
    assert all("~adv_" in r["example_id"] and r["parent_problem"] in seeds for r in adv)
    assert all(r["problem"] not in seeds for r in adv)  # generated for the derived problem
    # The judges scored adversarial rows on the extra criterion, and only those.
    judged = [
        r
        for name in ("validated_examples", "rejected_examples")
        for r in (wh.read_partition(name, DOMAIN) or pa_empty()).to_pylist()
        if r["validator_scores"]
    ]
    for r in judged:
        criteria = set(json.loads(r["validator_scores"][0]["criteria_json"] or "{}"))
        assert (ADVERSARIAL_CRITERION in criteria) == (r["technique"] == "adversarial"), r["example_id"]
    assert any(r["technique"] == "adversarial" for r in judged)
    # A rerun asks nothing again (derivations and generations are cached).
    again = materialize_domain(up_to("raw_generations"), warehouse, scripted_schemas_dir, target=24)
    assert again.asset_materializations_for_node("problem_matrix")[0].metadata["model_calls"].value == 0


def pa_empty() -> Any:
    import pyarrow as pa

    return pa.table({})


def test_a_failed_derivation_gives_its_target_back_to_the_base_row(schemas_dir: Path) -> None:
    from synth_pipelines.generation.techniques import attach_problems, derivation_key

    spec = load_spec(spec_with_techniques(schemas_dir)).spec
    rows = plan_technique_rows(spec, build_matrix(spec, [("s1", "First seed problem")], target_count=48))
    seeds = {"s1": "List the users of an account"}
    technique_rows = [r for r in rows if r.technique != "base" and r.target > 0]
    failed = technique_rows[0]
    problems = {derivation_key(r): f"derived {derivation_key(r)}" for r in technique_rows if r is not failed}
    problems.pop(derivation_key(failed), None)
    attached = attach_problems(rows, problems, seeds)
    assert sum(r.target for r in attached) == sum(r.target for r in rows)  # nothing lost
    lost = [r for r in technique_rows if derivation_key(r) == derivation_key(failed)]
    base = {r.cell_id: r.target for r in rows if r.technique == "base"}
    for r in attached:
        if r.technique == "base":
            assert r.target == base[r.cell_id] + sum(x.target for x in lost if x.cell_id == r.cell_id)
        else:
            assert r.problem and r.parent_problem == seeds["s1"]
