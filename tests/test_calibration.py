"""Thresholds that belong to the judge panel (issue 13): ``consensus_threshold: auto``, the panel's
calibration in the profile, ``synth calibrate`` and the agreement maths behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.llm.config import PanelCalibration, load_profile
from synth_pipelines.spec.loading import load_spec, parse_spec
from synth_pipelines.spec.model import DESIGN_CONSENSUS_THRESHOLD, DESIGN_DIVERSITY_THRESHOLD
from synth_pipelines.validation.calibration import (
    GateScore,
    LabelledFileError,
    best_threshold,
    best_thresholds,
    cohen_kappa,
    load_labelled,
)
from synth_pipelines.warehouse.storage import Warehouse
from tests.materialize import DOMAIN, materialize_domain, up_to
from tests.scripted import scripted_profile

REPO = Path(__file__).resolve().parent.parent
LABELLED = REPO / "tests" / "data" / "labelled"


def _profile_file(tmp_path: Path, calibration: dict | None = None) -> Path:
    data = scripted_profile().model_dump(mode="json", exclude_none=True)
    if calibration is not None:
        data["roles"]["calibration"] = calibration
    path = tmp_path / "scripted.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_kappa_matches_known_values() -> None:
    truth = [True] * 10 + [False] * 10
    assert cohen_kappa(truth, truth) == 1.0
    assert cohen_kappa([not t for t in truth], truth) == -1.0
    assert cohen_kappa([True] * 20, truth) == 0.0  # a gate that accepts everything knows nothing
    # 15 of 20 right with balanced marginals: observed 0.75, chance 0.5 -> 0.5
    predicted = [True] * 8 + [False] * 2 + [False] * 7 + [True] * 3
    assert cohen_kappa(predicted, truth) == pytest.approx(0.5)


def test_best_threshold_separates_scores_and_respects_rules() -> None:
    scores = [
        GateScore(good=True, rules_ok=True, rule_reasons=[], consensus=0.8),
        GateScore(good=True, rules_ok=True, rule_reasons=[], consensus=0.6),
        GateScore(good=False, rules_ok=True, rule_reasons=[], consensus=0.4),
        GateScore(good=False, rules_ok=True, rule_reasons=[], consensus=0.2),
        GateScore(good=False, rules_ok=False, rule_reasons=["a delete task must use DELETE"]),
    ]
    best = best_threshold(scores)
    assert best.threshold == 0.6 and best.kappa == 1.0
    assert (best.true_accept, best.false_accept, best.true_reject, best.false_reject) == (2, 0, 3, 0)


def test_the_shipped_labelled_sets_are_balanced_and_valid() -> None:
    for file in sorted(LABELLED.glob("*.jsonl")):
        rows = load_labelled(file)
        good = sum(r.label == "good" for r in rows)
        assert len(rows) >= 40 and abs(good - (len(rows) - good)) <= 1, file.name
        spec = load_spec(REPO / "schemas" / f"{file.stem}.yaml").spec
        for row in rows:
            assert set(row.example) == set(spec.fields), (file.name, row.example)
            assert set(row.conditions) <= set(spec.matrix.dimensions)


def test_a_broken_labelled_row_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"label": "good", "example": {}}\n{"label": "maybe", "example": {}}\n')
    with pytest.raises(LabelledFileError, match=r"x.jsonl:2: label"):
        load_labelled(bad)


# ------------------------------------------------------------------------------ auto thresholds


def _spec(threshold: object = None) -> dict:
    data = yaml.safe_load((REPO / "schemas" / "api_development.yaml").read_text())
    data.setdefault("validation", {}).pop("consensus_threshold", None)
    if threshold is not None:
        data["validation"]["consensus_threshold"] = threshold
    return data


def test_auto_takes_the_panels_calibration_and_a_number_overrides_it() -> None:
    spec = parse_spec(_spec())
    assert spec.validation.consensus_threshold == "auto"
    with pytest.raises(ValueError, match="not resolved"):
        _ = spec.validation.threshold
    calibrated, sources = spec.with_panel(0.4, "local", diversity=0.3)
    assert calibrated.validation.threshold == 0.4 and calibrated.validation.min_diversity == 0.3
    assert sources["consensus_threshold"] == "auto: calibrated for profile 'local'"
    uncalibrated, sources = spec.with_panel(None, "openai")
    assert uncalibrated.validation.threshold == DESIGN_CONSENSUS_THRESHOLD
    assert uncalibrated.validation.min_diversity == DESIGN_DIVERSITY_THRESHOLD
    assert "not calibrated" in sources["consensus_threshold"]
    fixed, sources = parse_spec(_spec(0.9)).with_panel(0.4, "local")
    assert fixed.validation.threshold == 0.9 and sources["consensus_threshold"] == "set in the spec"


def test_shipped_specs_and_templates_leave_the_threshold_to_the_panel() -> None:
    for path in [
        *sorted((REPO / "schemas").glob("*.yaml")),
        *sorted((REPO / "synth_pipelines/spec/templates").glob("*.yaml")),
    ]:
        assert parse_spec(yaml.safe_load(path.read_text())).validation.consensus_threshold == "auto", (
            path.name
        )
    local = load_profile("local").roles.calibration
    assert local is not None and local.labelled_sets and local.kappa is not None
    assert load_profile("openai").roles.calibration is None  # nobody calibrated it: 0.75 applies


def test_domain_schema_snapshots_the_panels_threshold_and_a_recalibration_makes_it_stale(
    tmp_path: Path, schemas_dir: Path, scripted_backends
) -> None:
    spec_path = schemas_dir / "api_development.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(), sort_keys=False))
    profile = _profile_file(tmp_path, {"consensus_threshold": 0.42, "kappa": 0.5})
    data = yaml.safe_load(profile.read_text())
    warehouse = tmp_path / "warehouse"
    first = materialize_domain(up_to("domain_schema"), warehouse, schemas_dir, llm=str(profile))
    snapshot = json.loads((warehouse / "domain_schema" / f"domain={DOMAIN}" / "spec.json").read_text())
    assert snapshot["spec"]["validation"]["consensus_threshold"] == 0.42
    assert snapshot["threshold_sources"]["consensus_threshold"] == "auto: calibrated for profile 'scripted'"
    assert Warehouse(warehouse).materialized_spec(DOMAIN).validation.threshold == 0.42  # type: ignore[union-attr]
    data["roles"]["calibration"]["consensus_threshold"] = 0.6
    profile.write_text(yaml.safe_dump(data))
    second = materialize_domain(up_to("domain_schema"), warehouse, schemas_dir, llm=str(profile))
    versions = [
        next(
            e for e in r.all_events if e.is_step_materialization
        ).step_materialization_data.materialization.tags["dagster/data_version"]
        for r in (first, second)
    ]
    assert versions[0] != versions[1]


def test_calibrate_prints_kappa_and_the_profile_block(
    tmp_path: Path, schemas_dir: Path, scripted_backends
) -> None:
    """On the scripted panel (every judge gives 5): the rules do all the work, and kappa says so."""
    result = CliRunner().invoke(
        app,
        ["calibrate", str(LABELLED / "api_development.jsonl"), "--profile", str(_profile_file(tmp_path)),
         "--schemas", str(schemas_dir), "--warehouse", str(tmp_path / "wh")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "api_development" in result.output and "rules alone: kappa" in result.output
    block = yaml.safe_load(result.output.split("\n# under roles:", 1)[1].split("\n", 1)[1])
    calibration = block["calibration"]
    assert 0 <= calibration["consensus_threshold"] <= 1 and calibration["rows"] == 41
    assert -1 <= calibration["kappa"] <= 1
    # Every judge gives 5: the panel never separates good from bad, so it adds no kappa and an
    # `auto` spec under this calibration skips it.
    assert calibration["panel_kappa_gain"] == 0.0
    assert PanelCalibration(**calibration).panel_skip_reason("p") is not None
    assert -1 <= calibration["field_agreement_threshold"] <= 1 and "cross-field agreement:" in result.output


def test_calibrate_saves_a_calibrated_profile_with_the_measured_diversity(
    tmp_path: Path, schemas_dir: Path, scripted_backends
) -> None:
    """--diversity reads what the generator reached per domain (80% of the lowest, rounded down);
    --save writes the profile with the new block, and that profile loads and resolves `auto`."""
    import pyarrow as pa

    from synth_pipelines.warehouse.storage import DIVERSITY_FILE

    wh = Warehouse(tmp_path / "wh")
    for domain, distance in (("api_development", 0.41), ("data_analysis", 0.52)):
        wh.write_partition("example_embeddings", domain, pa.table({"example_id": ["x"]}))
        wh.write_json(DIVERSITY_FILE.format(domain=domain), {"mean_pairwise_cosine_distance": distance})
    saved = tmp_path / "calibrated.yaml"
    result = CliRunner().invoke(
        app,
        ["calibrate", str(LABELLED / "api_development.jsonl"), "--profile", str(_profile_file(tmp_path)),
         "--schemas", str(schemas_dir), "--warehouse", str(tmp_path / "wh"), "--diversity",
         "--save", str(saved)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "diversity reached by the generator on api_development: 0.410" in result.output
    profile = load_profile(str(saved))
    assert profile.roles.calibration is not None
    assert profile.roles.calibration.diversity_threshold == 0.32  # floor(0.8 * 0.41, 2)
    assert profile.roles.calibration.rows == 41
    assert set(profile.models) == set(load_profile(str(_profile_file(tmp_path))).models)


def test_calibrate_diversity_without_embeddings_says_what_to_do(
    tmp_path: Path, schemas_dir: Path, scripted_backends
) -> None:
    result = CliRunner().invoke(
        app,
        ["calibrate", str(LABELLED / "api_development.jsonl"), "--profile", str(_profile_file(tmp_path)),
         "--schemas", str(schemas_dir), "--warehouse", str(tmp_path / "empty"), "--diversity"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no domain in the warehouse has example_embeddings yet" in result.output


def test_the_on_topic_gate_is_kept_only_where_it_raises_kappa() -> None:
    on = [
        GateScore(good=True, rules_ok=True, rule_reasons=[], consensus=0.5, on_topic=0.7),
        GateScore(good=True, rules_ok=True, rule_reasons=[], consensus=0.5, on_topic=0.6),
        GateScore(good=False, rules_ok=True, rule_reasons=[], consensus=0.5, on_topic=0.2),
        GateScore(good=False, rules_ok=True, rule_reasons=[], consensus=0.5, on_topic=0.1),
    ]
    joint = best_thresholds(on)
    assert joint.kappa == 1.0 and joint.on_topic_threshold == 0.6  # the judges cannot tell; topic can
    useless = [s.model_copy(update={"on_topic": 0.5}) for s in on]
    assert best_thresholds(useless).on_topic_threshold is None


def test_off_topic_rows_are_rejected_before_any_judge(tmp_path: Path, schemas_dir: Path) -> None:
    from synth_pipelines.llm.factory import build_client
    from synth_pipelines.validation.apply_gates import validate_examples
    from synth_pipelines.warehouse.tables import RAW_GENERATIONS
    from tests.scripted import ScriptedBackend

    spec = load_spec(schemas_dir / "api_development.yaml").spec
    spec = spec.with_panel(0.0, "t", on_topic=0.5, field_agreement=-1.0)[0]
    example = {"task": "Remove a user account now", "method": "DELETE", "endpoint": "/users/{id}",
               "explanation": "The call removes the account named in the path for good."}  # fmt: skip
    rows = [
        {name: None for name in RAW_GENERATIONS.names}
        | {"example_id": f"e{i}", "status": "ok", "problem": problem, "conditions_json": "{}",
           "complexity": "simple", "example_json": json.dumps({**example, "task": f"{example['task']} {i}"})}
        for i, problem in enumerate(["on topic", "off topic", "on topic"])
    ]  # fmt: skip
    import pyarrow as pa

    raw = pa.Table.from_pylist(rows, schema=RAW_GENERATIONS)
    profile = scripted_profile()
    judges = {n: ScriptedBackend(n, judge_score=5) for n in profile.models}
    client = build_client(profile, None)
    client.backends.update(judges)
    judged = lambda problems, texts: [0.9 if p == "on topic" else 0.1 for p in problems]  # noqa: E731
    outcome = validate_examples(spec, raw, client, list(profile.roles.validators), similarity=judged)
    assert outcome.stage_counts == {"off_topic": 1}
    rejected = outcome.rejected.to_pylist()
    assert (
        rejected[0]["example_id"] == "e1" and "off topic: similarity 0.100" in rejected[0]["fail_reasons"][0]
    )
    assert outcome.accepted.num_rows == 2 and outcome.candidates == 2
    assert sum(b.calls for b in judges.values()) == 2  # one judge each (threshold 0 decides early)
    with pytest.raises(ValueError, match="no similarity function"):
        validate_examples(spec, raw, client, list(profile.roles.validators))
