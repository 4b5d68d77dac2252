"""The feedback loop's record: boosts that outlast the run that asked for them, readers that never
lock out writers, and sensor edge cases (per-domain windows, any in-flight run, reverted specs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.learning.feedback import feedback_targets
from synth_pipelines.learning.outcomes import AgentOutcome, record_outcomes, rolling_success
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.sensors import agent_performance_sensor, plan_spec_runs
from synth_pipelines.warehouse.storage import StorageError, Warehouse
from tests.materialize import materialize_domain, up_to

REPO = Path(__file__).resolve().parent.parent
UP_TO_MATRIX = up_to("problem_matrix")
DOMAIN = "api_development"


def _matrix(wh_root: Path, schemas: Path, weak_cells: list[str] | None = None) -> dict[str, int]:
    config = {"weak_cells": weak_cells} if weak_cells else {}
    result = materialize_domain(UP_TO_MATRIX, wh_root, schemas, op_config={"problem_matrix": config})
    assert result.success
    table = Warehouse(wh_root).read_partition("problem_matrix", DOMAIN, columns=["cell_id", "target"])
    assert table is not None
    return dict(zip(table.column("cell_id").to_pylist(), table.column("target").to_pylist(), strict=True))


# ------------------------------------------------------------------------------ item 4: lasting boosts


def test_feedback_boost_outlasts_the_run_that_asked_for_it(tmp_path: Path, schemas_dir: Path) -> None:
    wh_root = tmp_path / "wh"
    plain = _matrix(wh_root, schemas_dir)
    weak = sorted(plain)[:2]
    boosted = _matrix(wh_root, schemas_dir, weak_cells=weak)
    assert all(boosted[c] > plain[c] for c in weak)
    assert all(boosted[c] == plain[c] for c in plain if c not in weak)  # nothing elsewhere shrinks
    # The next ordinary run (no weak cells in its config) keeps the boost: it is recorded, not configured.
    assert _matrix(wh_root, schemas_dir) == boosted
    assert set(feedback_targets(Warehouse(wh_root), DOMAIN)) == set(weak)
    # A second episode for one of the cells adds on top.
    again = _matrix(wh_root, schemas_dir, weak_cells=weak[:1])
    assert again[weak[0]] > boosted[weak[0]] and again[weak[1]] == boosted[weak[1]]


# ----------------------------------------------------------------------- item 7: readers never block

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    conn = duckdb.connect(sys.argv[1])  # a writer holding the file (a long dbt build, an open shell)
    conn.execute("CREATE TABLE IF NOT EXISTS held (x INT)")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def _hold_duckdb(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_status_and_the_sensor_read_while_a_writer_holds_duckdb(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "wh")
    now = datetime.now(UTC)
    record_outcomes(
        wh, [AgentOutcome(outcome_id=f"o{i}", domain=DOMAIN, success=i % 2 == 0) for i in range(10)]
    )
    wh.write_dataset("raw_generations", DOMAIN, pa.table({"example_id": ["a", "b"]}))
    holder = _hold_duckdb(wh.duckdb_path, 20)
    try:
        started = time.monotonic()
        rates = rolling_success(wh, windows={DOMAIN: timedelta(days=1)}, now=now + timedelta(seconds=5))
        status = CliRunner().invoke(app, ["status", "--warehouse", str(tmp_path / "wh")])
        assert time.monotonic() - started < 5  # no waiting on the lock
    finally:
        holder.kill()
        holder.wait()
    assert rates[DOMAIN].n == 10 and rates[DOMAIN].rate == pytest.approx(0.5)
    assert status.exit_code == 0, status.output
    assert DOMAIN in status.output and "2" in status.output


def test_a_writer_that_cannot_lock_the_mirror_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synth_pipelines.warehouse.storage as storage

    wh = Warehouse(tmp_path / "wh")
    wh.write_dataset("validated_examples", DOMAIN, pa.table({"example_id": ["good"]}))
    monkeypatch.setattr(storage, "DUCKDB_LOCK_WAIT_S", 1.0)
    holder = _hold_duckdb(wh.duckdb_path, 20)
    try:
        with pytest.raises(
            StorageError, match=r"stayed locked by another process for 1s.*Nothing was written"
        ):
            wh.write_dataset("validated_examples", DOMAIN, pa.table({"example_id": ["worse"]}))
    finally:
        holder.kill()
        holder.wait()
    table = wh.read_partition("validated_examples", DOMAIN)
    assert table is not None and table.column("example_id").to_pylist() == ["good"]  # Parquet untouched
    with wh.duckdb() as conn:  # and the mirror still agrees with it
        assert conn.execute("SELECT example_id FROM validated_examples").fetchall() == [("good",)]


# ------------------------------------------------------------------------------- item 8: the sensors


def _spec_with_window(schemas: Path, domain: str, hours: float) -> None:
    spec = yaml.safe_load((REPO / "schemas" / f"{DOMAIN}.yaml").read_text())
    spec.update(domain=domain, name=domain, feedback={"window_hours": hours, "min_outcomes": 3})
    (schemas / f"{domain}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_each_domain_uses_its_own_window(tmp_path: Path, schemas_dir: Path) -> None:
    for path in schemas_dir.glob("*.yaml"):
        path.unlink()
    _spec_with_window(schemas_dir, "short_window", 24)
    _spec_with_window(schemas_dir, "long_window", 168)
    wh = Warehouse(tmp_path / "wh")
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    record_outcomes(
        wh,
        [
            AgentOutcome(outcome_id=f"{d}{i}", domain=d, success=False, recorded_at=two_days_ago)
            for d in ("short_window", "long_window")
            for i in range(5)
        ],
    )
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance,
        resources={"warehouse": WarehouseResource(root=str(tmp_path / "wh"), schemas_dir=str(schemas_dir))},
    )
    result = agent_performance_sensor(context)
    # Two-day-old failures count for the week-long window only (once the largest window was used).
    assert [r.partition_key for r in result.run_requests] == ["long_window"]


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING])
def test_any_run_of_the_domain_holds_the_regeneration(
    tmp_path: Path, schemas_dir: Path, status: dg.DagsterRunStatus
) -> None:
    wh = Warehouse(tmp_path / "wh")
    record_outcomes(wh, [AgentOutcome(outcome_id=f"o{i}", domain=DOMAIN, success=False) for i in range(20)])
    instance = dg.DagsterInstance.ephemeral()
    # A run launched by hand (no sensor tags), still running or being cancelled.
    instance.add_run(
        dg.DagsterRun(
            job_name="synth_domain", run_id="manual-run", tags={"dagster/partition": DOMAIN}, status=status
        )
    )
    context = dg.build_sensor_context(
        instance=instance,
        resources={"warehouse": WarehouseResource(root=str(tmp_path / "wh"), schemas_dir=str(schemas_dir))},
    )
    result = agent_performance_sensor(context)
    assert result.run_requests == []
    state = json.loads(result.cursor)["domains"][DOMAIN]
    assert state["episode"] == 0  # held, not spent


def test_a_reverted_spec_runs_again(schemas_dir: Path) -> None:
    path = schemas_dir / "data_analysis.yaml"
    original = path.read_text()
    first = plan_spec_runs(schemas_dir, set(), {})
    edited_text = original + "\n# edited\n"
    path.write_text(edited_text)
    edited = plan_spec_runs(schemas_dir, set(), first.cursor)
    path.write_text(original)  # reverted to the first version
    reverted = plan_spec_runs(schemas_dir, set(), edited.cursor)
    keys = [
        next(r.run_key for r in plan.runs if r.domain == "data_analysis")
        for plan in (first, edited, reverted)
    ]
    assert len(set(keys)) == 3  # the revert is a new run, not a duplicate of the first key
    assert plan_spec_runs(schemas_dir, set(), reverted.cursor).runs == []  # and then nothing more
    # Cursors written before the sequence (domain -> hash) still work.
    legacy = {d: entry["hash"] for d, entry in first.cursor.items()}
    assert plan_spec_runs(schemas_dir, set(), legacy).runs == []


def test_scores_and_outcomes_kept_only_in_an_old_duckdb_file_are_adopted(tmp_path: Path) -> None:
    """A warehouse written before the Parquet record: its DuckDB rows are copied over once, on the
    next write, and nothing recorded earlier is lost (`make demo` on an old warehouse hit this)."""
    import duckdb

    from synth_pipelines.learning.outcomes import record_performance

    wh = Warehouse(tmp_path / "wh")
    wh.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(wh.duckdb_path)) as conn:
        conn.execute(
            "CREATE TABLE agent_performance (domain VARCHAR, source VARCHAR, score DOUBLE, n BIGINT, "
            "metric VARCHAR, run_id VARCHAR, recorded_at TIMESTAMP)"
        )
        conn.execute(
            "INSERT INTO agent_performance VALUES ('api_development', 'compiled_program', 0.4, 10, "
            "'llm_judge', 'old-run', TIMESTAMP '2026-01-01 00:00:00')"
        )
        conn.execute("CREATE TABLE agent_outcomes (outcome_id VARCHAR, domain VARCHAR, success BOOLEAN)")
    record_performance(
        wh,
        {"domain": "api_development", "source": "compiled_program", "score": 0.7, "n": 12,
         "metric": "llm_judge", "run_id": "new-run", "recorded_at": datetime(2026, 11, 1)},
    )  # fmt: skip
    table = wh.read_dataset("agent_performance", columns=["run_id", "score"])
    assert table is not None
    assert sorted(
        zip(table.column("run_id").to_pylist(), table.column("score").to_pylist(), strict=True)
    ) == [
        ("new-run", 0.7),
        ("old-run", 0.4),
    ]
