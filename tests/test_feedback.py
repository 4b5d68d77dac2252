"""The feedback loop: recording outcomes (Python, CLI, dropped files) and the performance sensor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.generation.matrix import build_matrix, feedback_extras
from synth_pipelines.generation.techniques import plan_technique_rows
from synth_pipelines.learning.feedback import DomainState, decide
from synth_pipelines.learning.outcomes import (
    AgentOutcome,
    SuccessRate,
    ingest_inbox,
    record_outcomes,
    record_performance,
    rolling_success,
)
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.sensors import agent_performance_sensor
from synth_pipelines.spec.loading import load_spec
from synth_pipelines.spec.model import FeedbackSpec
from synth_pipelines.warehouse.storage import Warehouse

DOMAINS = {"api_development", "data_analysis"}


def outcome(i: int, success: bool, cell: str | None = None, domain: str = "api_development", **kw) -> dict:
    return {
        "outcome_id": f"o{i}",
        "domain": domain,
        "cell_id": cell,
        "success": success,
        "agent": "test",
        **kw,
    }


def test_good_rows_kept_bad_rows_rejected_with_reasons(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    rows = [
        outcome(1, True),
        outcome(2, False, domain="../etc"),
        outcome(3, True, domain="unknown_domain"),
        {"outcome_id": "o4", "domain": "api_development"},  # missing success
        outcome(1, False),  # duplicate in the batch
        outcome(5, False, cell="c_1"),
    ]
    report = record_outcomes(wh, rows, known_domains=DOMAINS)
    assert report.accepted == 2
    reasons = {r.outcome_id: r.reason for r in report.rejected}
    assert "unsafe domain name" in reasons["o2"]
    assert "has no spec" in reasons["o3"]
    assert reasons["o4"] == "success: missing"
    assert reasons["o1"] == "duplicate outcome_id in this batch"
    again = record_outcomes(wh, [outcome(5, True)], known_domains=DOMAINS)
    assert again.accepted == 0 and again.rejected[0].reason == "outcome_id already recorded"


def test_dropped_files_are_ingested_once(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    inbox = wh.root / "outcomes_inbox"
    inbox.mkdir(parents=True)
    (inbox / "batch.jsonl").write_text(
        "\n".join([json.dumps(outcome(1, True)), "{broken", json.dumps(outcome(2, False))])
    )
    reports = ingest_inbox(wh, known_domains=DOMAINS)
    assert reports["batch.jsonl"].accepted == 2
    assert (
        "malformed JSON" in reports["batch.jsonl"].rejected[0].reason
        or "missing" in reports["batch.jsonl"].rejected[0].reason
    )
    assert not (inbox / "batch.jsonl").exists() and (inbox / "processed" / "batch.jsonl").exists()
    assert (inbox / "processed" / "batch.jsonl.rejected.json").exists()
    assert ingest_inbox(wh, known_domains=DOMAINS) == {}


def test_cli_record_outcome(tmp_path: Path) -> None:
    runner = CliRunner()
    schemas = str(Path(__file__).resolve().parent.parent / "schemas")
    ok = runner.invoke(
        app,
        [
            "record-outcome",
            "--domain",
            "api_development",
            "--failure",
            "--cell-id",
            "c_x",
            "--warehouse",
            str(tmp_path / "wh"),
            "--schemas",
            schemas,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "1 outcome(s) recorded" in ok.output
    bad = runner.invoke(
        app,
        [
            "record-outcome",
            "--domain",
            "nope",
            "--success",
            "--warehouse",
            str(tmp_path / "wh"),
            "--schemas",
            schemas,
        ],
    )
    assert bad.exit_code == 1 and "has no spec" in bad.output


def test_rolling_success_counts_window_cells_and_program_score(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    now = datetime.now(UTC)
    record_outcomes(
        wh,
        [outcome(i, i < 3, cell="c_a" if i < 5 else "c_b") for i in range(10)]
        + [outcome(99, False, recorded_at=now - timedelta(days=30))],
    )
    week = {"api_development": timedelta(days=7)}
    rates = rolling_success(wh, windows=week, now=now)
    assert rates["api_development"].n == 10 and rates["api_development"].rate == pytest.approx(0.3)
    assert rates["api_development"].per_cell["c_a"] == (pytest.approx(0.6), 5)
    record_performance(
        wh,
        {
            "domain": "api_development",
            "source": "compiled_program",
            "score": 0.9,
            "n": 4,
            "metric": "m",
            "run_id": "r",
            "recorded_at": now.replace(tzinfo=None),
        },
    )
    rates = rolling_success(wh, windows=week, now=now + timedelta(seconds=1), program_weight=5)
    assert rates["api_development"].n == 15
    assert rates["api_development"].rate == pytest.approx((3 + 4.5) / 15)
    assert rates["api_development"].program_score == 0.9


def test_decide_holds_in_flight_and_respects_cooldown() -> None:
    cfg = {"d": FeedbackSpec(min_outcomes=5, cooldown_minutes=30)}
    low = {"d": SuccessRate(domain="d", rate=0.2, n=10)}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    decisions, _ = decide(low, cfg, {}, {"d"}, now)
    assert decisions[0].action == "hold" and "in flight" in decisions[0].reason
    recent = {"d": DomainState(armed=True, episode=1, last_request_at=now - timedelta(minutes=5))}
    decisions, _ = decide(low, cfg, recent, set(), now)
    assert decisions[0].action == "hold" and "cooldown" in decisions[0].reason


def test_simulated_loop_through_the_sensor(tmp_path: Path, schemas_dir: Path) -> None:
    """Low outcomes -> exactly one targeted run; matrix targets rise; repeated ticks request nothing;
    after recovery nothing more is requested."""
    wh_root = tmp_path / "wh"
    wh = Warehouse(wh_root)
    spec = load_spec(schemas_dir / "api_development.yaml").spec
    cells = build_matrix(spec, [("s1", "First seed problem")])
    weak_cell, ok_cell = cells[0].cell_id, cells[1].cell_id
    rows = [outcome(i, False, cell=weak_cell) for i in range(8)] + [
        outcome(100 + i, i < 3, cell=ok_cell) for i in range(4)
    ]
    assert record_outcomes(wh, rows).accepted == 12  # success 3/12 = 0.25 < 0.70
    instance = dg.DagsterInstance.ephemeral()
    resources = {"warehouse": WarehouseResource(root=str(wh_root), schemas_dir=str(schemas_dir))}

    def tick(cursor: str | None) -> dg.SensorResult:
        return agent_performance_sensor(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        )

    first = tick(None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == "api_development"
    assert request.run_key == "agent_performance:api_development:1"
    weak = request.run_config["ops"]["problem_matrix"]["config"]["weak_cells"]
    assert weak == [weak_cell]  # ok_cell (3/4) is above the threshold

    before = {c.cell_id: c.target for c in cells}
    boosted = plan_technique_rows(
        spec, build_matrix(spec, [("s1", "First seed problem")]), feedback_extras(spec, weak)
    )
    after = {c.cell_id: c.target for c in boosted}
    assert after[weak_cell] > before[weak_cell]

    second = tick(first.cursor)
    assert second.run_requests == []  # still low, but already regenerated: hysteresis holds
    third = tick(second.cursor)
    assert third.run_requests == []

    # Recovery: many successes lift the rate above recover_threshold (0.80); nothing is requested.
    assert record_outcomes(wh, [outcome(1000 + i, True, cell=weak_cell) for i in range(60)]).accepted == 60
    recovered = tick(third.cursor)
    assert recovered.run_requests == []
    state = json.loads(recovered.cursor)["domains"]["api_development"]
    assert state["armed"] is True and state["episode"] == 1
    assert tick(recovered.cursor).run_requests == []


def test_python_api_accepts_models(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    report = record_outcomes(wh, [AgentOutcome(outcome_id="x", domain="api_development", success=True)])
    assert report.accepted == 1
