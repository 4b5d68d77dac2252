"""An endpoint that dies mid-run fails the asset within seconds (circuit breaker), keeps every
finished row, leaves no partition behind, and the rerun resumes without asking for finished items."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.materialize import failure_message, materialize_domain, up_to
from tests.test_openai_compat import profile_file

UP_TO_RAW = up_to("raw_generations")
PLANNED = 40
DOMAIN = "api_development"


def _materialize(
    warehouse: Path, schemas: Path, profile: Path, *, target: int = PLANNED
) -> dg.ExecuteInJobResult:
    return materialize_domain(
        UP_TO_RAW, warehouse, schemas, llm=str(profile), target=target, raise_on_error=False
    )


def test_dead_endpoint_fails_fast_then_rerun_resumes(tmp_path: Path, scripted_schemas_dir: Path) -> None:
    warehouse = tmp_path / "warehouse"
    # The server crashes after 15 requests: connections reset, then the port refuses them.
    server = FakeOpenAIServer(FaultPlan(latency_s=0.05, die_after=15)).start()
    port = server.port
    profile = profile_file(tmp_path, server.base_url, max_retries=4, timeout_s=5)
    crashed: dict[str, float] = {}

    def note_crash() -> None:
        server.dead.wait(120)
        crashed["at"] = time.monotonic()

    watcher = threading.Thread(target=note_crash, daemon=True)
    watcher.start()
    result = _materialize(warehouse, scripted_schemas_dir, profile)
    failed_at = time.monotonic()
    watcher.join(5)
    server.stop()
    assert not result.success
    message = failure_message(result)
    assert f"127.0.0.1:{port}" in message and "looks down" in message and "rerun resumes" in message
    # Not minutes of per-item retries: the breaker opened on the first connection failures.
    assert failed_at - crashed["at"] < 10
    parts = InflightRows(warehouse / "raw_generations" / f"domain={DOMAIN}" / "_inflight", RAW_GENERATIONS)
    kept = parts.read_columns(["example_id", "status"]).to_pydict()
    finished = {eid for eid, status in zip(kept["example_id"], kept["status"], strict=True) if status == "ok"}
    assert 5 <= len(finished) < PLANNED
    assert not (warehouse / "raw_generations" / f"domain={DOMAIN}" / "part-0.parquet").exists()

    with FakeOpenAIServer(FaultPlan(latency_s=0.05), port=port) as revived:
        again = _materialize(warehouse, scripted_schemas_dir, profile)
        assert again.success
        new_calls = revived.stats.requests
    # Every item that had finished was served from the kept rows, not asked again.
    assert new_calls <= PLANNED - len(finished)
    rows = duckdb.sql(
        f"select example_id, status from read_parquet('{warehouse}/raw_generations/*/*.parquet')"
    ).fetchall()
    assert len(rows) == PLANNED == len({r[0] for r in rows})
    assert all(status == "ok" for _, status in rows)
    assert not parts.folder.exists()  # published: the in-flight parts are gone


def test_synth_generate_completes_every_item_through_thirty_percent_faults(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from synth_pipelines.cli import app

    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # an ephemeral instance for this run
    plan = FaultPlan(
        latency_s=0.01,
        rate_429=0.075,
        retry_after_s=0.05,
        rate_500=0.075,
        rate_hang=0.075,
        hang_s=3.0,
        rate_broken_json=0.075,
        seed=7,
    )
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(plan) as server:
        profile = profile_file(tmp_path, server.base_url, timeout_s=0.5, max_retries=8)
        result = CliRunner().invoke(
            app,
            ["generate", "--domain", DOMAIN, "--count", str(PLANNED), "--profile", str(profile),
             "--warehouse", str(warehouse), "--schemas", str(scripted_schemas_dir)],
        )  # fmt: skip
        faults = dict(server.stats.faults)
    assert result.exit_code == 0, result.output[-3000:]
    assert all(faults.get(kind, 0) > 0 for kind in ("429", "500", "hang", "broken_json")), faults
    rows = duckdb.sql(
        f"select example_id, status from read_parquet('{warehouse}/raw_generations/*/*.parquet')"
    ).fetchall()
    assert len(rows) == PLANNED == len({r[0] for r in rows})  # every item, once
    assert all(status == "ok" for _, status in rows)


def test_an_outage_keeps_the_previous_partition_and_the_rerun_asks_nothing_twice(
    tmp_path: Path, scripted_schemas_dir: Path
) -> None:
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(FaultPlan(latency_s=0.02)) as healthy:
        port = healthy.port
        profile = profile_file(tmp_path, healthy.base_url, max_retries=4, timeout_s=5)
        first = _materialize(warehouse, scripted_schemas_dir, profile, target=20)
        assert first.success
    previous = _raw_ids(warehouse)
    assert len(previous) == 20
    # Twice the plan: the first 20 items are cached; the server dies 10 requests into the rest.
    with FakeOpenAIServer(FaultPlan(latency_s=0.05, die_after=10), port=port):
        failed = _materialize(warehouse, scripted_schemas_dir, profile, target=40)
    assert not failed.success and "looks down" in failure_message(failed)
    assert _raw_ids(warehouse) == previous  # the previous partition is intact
    parts = InflightRows(warehouse / "raw_generations" / f"domain={DOMAIN}" / "_inflight", RAW_GENERATIONS)
    kept = set(parts.read_columns(["example_id"]).column("example_id").to_pylist())
    with FakeOpenAIServer(FaultPlan(latency_s=0.02), port=port) as revived:
        again = _materialize(warehouse, scripted_schemas_dir, profile, target=40)
        asked = revived.stats.requests
    assert again.success and len(_raw_ids(warehouse)) == 40
    assert asked <= 40 - len(set(previous) | kept)  # nothing finished was asked again


def _raw_ids(warehouse: Path) -> list[str]:
    path = warehouse / "raw_generations" / f"domain={DOMAIN}" / "part-0.parquet"
    return sorted(r[0] for r in duckdb.sql(f"select example_id from read_parquet('{path}')").fetchall())


def test_a_dagster_home_that_is_not_a_directory_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster refuses such a DAGSTER_HOME with a traceback; the main job says what to do in one
    line, creates nothing (a typo would start an instance the UI never reads), and
    ``--sync-partitions`` without DAGSTER_HOME is refused, not run on a throwaway instance."""
    from synth_pipelines.runner import main

    missing = tmp_path / "no_such_home"
    monkeypatch.setenv("DAGSTER_HOME", str(missing))
    assert main(["--domain", "api_development", "--target-count", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: DAGSTER_HOME={missing} is not a directory: create it (mkdir -p {missing}) or unset "
        "DAGSTER_HOME to run on a throwaway instance\n"
    )
    assert not missing.exists()
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["--sync-partitions"]) == 2
    assert "set it" in capsys.readouterr().err
