"""An endpoint that dies mid-run fails the asset within seconds (circuit breaker), keeps every
finished row, leaves no partition behind, and the rerun resumes without asking for finished items."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg
import duckdb

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.test_openai_compat import profile_file

UP_TO_RAW = PIPELINE_ASSETS[:4]
PLANNED = 40
DOMAIN = "api_development"


def _materialize(warehouse: Path, schemas: Path, profile: Path) -> dg.ExecuteInJobResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [DOMAIN])
    return dg.materialize(
        UP_TO_RAW,
        partition_key=DOMAIN,
        instance=instance,
        resources={
            "warehouse": WarehouseResource(root=str(warehouse), schemas_dir=str(schemas)),
            "llm": LLMResource(profile=str(profile)),
            "embedder": EmbedderResource(),
        },
        run_config={"ops": {"problem_matrix": {"config": {"target_count": PLANNED}}}},
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInJobResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.user_failure_data:
            return event.step_failure_data.user_failure_data.description or ""
    raise AssertionError("no step failed with a description")


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
    message = _failure(result)
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
