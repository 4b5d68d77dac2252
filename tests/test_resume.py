"""A run SIGKILLed mid-generation resumes: no repeated calls for finished items, no lost or duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb

from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from tests.materialize import materialize_domain, up_to
from tests.test_openai_compat import profile_file

REPO = Path(__file__).resolve().parent.parent
TARGET = 12
UP_TO_RAW = up_to("raw_generations")  # domain_schema .. raw_generations

CHILD = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
    from tests.materialize import up_to
    warehouse, schemas, profile = sys.argv[1:4]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("domain", ["api_development"])
    dg.materialize(
        up_to("raw_generations"), partition_key="api_development", instance=instance,
        resources={"warehouse": WarehouseResource(root=warehouse, schemas_dir=schemas),
                   "llm": LLMResource(profile=profile), "embedder": EmbedderResource()},
        run_config={"ops": {"problem_matrix": {"config": {"target_count": int(sys.argv[4])}}}},
    )
    """
)


def test_sigkill_mid_generation_then_resume(tmp_path: Path, schemas_dir: Path) -> None:
    warehouse = tmp_path / "warehouse"
    inflight = warehouse / "raw_generations" / "domain=api_development" / "_inflight"

    def flushed_rows() -> int:
        return InflightRows(inflight, RAW_GENERATIONS).read_columns(["example_id"]).num_rows

    with FakeOpenAIServer(FaultPlan(latency_s=0.15)) as server:
        profile = profile_file(tmp_path, server.base_url, max_concurrency=1)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(warehouse), str(schemas_dir), str(profile), str(TARGET)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if flushed_rows() >= 4:
                break
            if child.poll() is not None:
                raise AssertionError("the child run finished before it could be killed")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        finished = flushed_rows()
        assert 4 <= finished < TARGET
        calls_before = server.stats.requests
        assert not (warehouse / "raw_generations/domain=api_development/part-0.parquet").exists()

        result = materialize_domain(UP_TO_RAW, warehouse, schemas_dir, llm=str(profile), target=TARGET)
        assert result.success
        new_calls = server.stats.requests - calls_before
    # Finished items were not asked again (an item in flight at the kill may be, once).
    assert new_calls <= TARGET - finished
    rows = duckdb.sql(
        f"select example_id from read_parquet('{warehouse}/raw_generations/*/*.parquet')"
    ).fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == TARGET == len(set(ids))
    assert not inflight.exists()  # the partition holds everything now
