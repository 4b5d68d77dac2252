"""A backfill of two domains with the multiprocess executor shares the model pool across runs.

It runs the way a scaled-out deployment does: datasets in an S3 bucket (a moto server here, reached
through s3fs with credentials from the environment), DuckDB and the cache in a local state folder."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.s3 import bucket_keys
from tests.test_openai_compat import profile_file

# The graph up to validated_examples: every model-calling step but the program, fewer subprocesses.
SELECTION = [
    dg.AssetKey(k)
    for k in ("domain_schema", "seed_problems", "problem_matrix", "raw_generations", "validated_examples")
]
REPO = Path(__file__).resolve().parent.parent
CHILD = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from synth_pipelines.definitions import resolved_synth_domain_job
    with dg.execute_job(
        dg.reconstructable(resolved_synth_domain_job), instance=dg.DagsterInstance.get(),
        run_config={"ops": {"problem_matrix": {"config": {"target_count": 4}}}},
        tags={"dagster/partition": sys.argv[1]},
    ) as result:
        sys.exit(0 if result.success else 1)
    """
)
POOL_STEPS = {"seed_problems", "raw_generations", "validated_examples"}


def test_two_domains_multiprocess_respect_pool_limit(
    tmp_path: Path, scripted_schemas_dir: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
    )
    with FakeOpenAIServer(FaultPlan(latency_s=0.01)) as server:
        for key, value in {
            "DAGSTER_HOME": str(home),
            "SYNTH_WAREHOUSE": f"s3://{s3_bucket}/warehouse",
            "SYNTH_STATE_DIR": str(tmp_path / "state"),
            "SYNTH_SCHEMAS": str(scripted_schemas_dir),
            "SYNTH_PROFILE": str(profile_file(tmp_path, server.base_url)),
        }.items():
            monkeypatch.setenv(key, value)
        from synth_pipelines.resources.pools import LLM_POOL

        instance = dg.DagsterInstance.get()
        domains = ["api_development", "data_analysis"]
        instance.add_dynamic_partitions("domain", domains)
        # Two runs at once, as a backfill launches them: separate processes sharing one instance.
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, d], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
            )
            for d in domains
        ]
        assert [p.wait(600) for p in procs] == [0, 0]
        instance = dg.DagsterInstance.from_config(str(home))  # a fresh view of what the runs wrote
        assert instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 1
        runs = instance.get_runs()
        results = {r.tags["dagster/partition"]: r for r in runs}
        assert set(results) == set(domains)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    keys = bucket_keys(s3_bucket)
    for domain in domains:
        assert f"warehouse/validated_examples/domain={domain}/part-0.parquet" in keys
    with duckdb.connect(str(tmp_path / "state" / "synth.duckdb"), read_only=True) as conn:
        mirrored = dict(conn.execute("select domain, count(*) from raw_generations group by 1").fetchall())
    assert mirrored == {d: 4 for d in domains}  # both processes wrote the one state DuckDB

    # Steps in the pool never overlapped, across both runs.
    intervals = []
    for domain, result in results.items():
        starts: dict[str, float] = {}
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is None or event.step_key not in POOL_STEPS:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                intervals.append((starts[event.step_key], record.timestamp, domain, event.step_key))
    intervals.sort()
    # seed_problems, raw_generations and validated_examples of both runs at least.
    assert len(intervals) >= 6, "\n".join(map(str, intervals))
    for (_, e1, d1, k1), (s2, _, d2, k2) in itertools.pairwise(intervals):
        assert s2 >= e1 - 0.05, f"{d1}/{k1} overlapped {d2}/{k2}"
