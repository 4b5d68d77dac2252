"""Two domains materialized at once by separate processes share one warehouse, cache and DuckDB file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.test_openai_compat import profile_file

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
    from synth_pipelines.runner import materialize_domain
    warehouse, schemas, profile, domain = sys.argv[1:5]
    result = materialize_domain(
        domain, instance=dg.DagsterInstance.ephemeral(), target_count=6,
        resources={"warehouse": WarehouseResource(root=warehouse, schemas_dir=schemas),
                   "llm": LLMResource(profile=profile), "embedder": EmbedderResource()},
    )
    sys.exit(0 if result.success else 1)
    """
)


def test_two_partitions_in_parallel_processes(tmp_path: Path, scripted_schemas_dir: Path) -> None:
    warehouse = tmp_path / "warehouse"
    with FakeOpenAIServer(FaultPlan(latency_s=0.01)) as server:
        profile = profile_file(tmp_path, server.base_url)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(warehouse), str(scripted_schemas_dir), str(profile), d],
                cwd=REPO,
                env=env,
            )
            for d in ("api_development", "data_analysis")
        ]
        assert [p.wait(300) for p in procs] == [0, 0]
    with duckdb.connect(str(warehouse / "synth.duckdb"), read_only=True) as conn:
        domains = {r[0] for r in conn.execute("select distinct domain from raw_generations").fetchall()}
        assert domains == {"api_development", "data_analysis"}
        assert conn.execute("select count(*) from agent_performance").fetchone()[0] == 2
    rows = duckdb.sql(
        f"select domain, count(*) from read_parquet('{warehouse}/raw_generations/*/*.parquet', "
        "hive_partitioning=true) group by 1 order by 1"
    ).fetchall()
    assert rows == [("api_development", 6), ("data_analysis", 6)]
