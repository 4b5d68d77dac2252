"""A backfill of two domains with the multiprocess executor shares the model pool across runs."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import dagster as dg
import pytest

from synth_pipelines.testing.fake_openai import FakeOpenAIServer, FaultPlan
from tests.test_openai_compat import profile_file

# The graph up to validated_examples: every model-calling step but the program, fewer subprocesses.
SELECTION = [
    dg.AssetKey(k)
    for k in ("domain_schema", "seed_problems", "problem_matrix", "raw_generations", "validated_examples")
]
POOL_STEPS = {"seed_problems", "raw_generations", "validated_examples"}


def test_two_domains_multiprocess_respect_pool_limit(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
    )
    with FakeOpenAIServer(FaultPlan(latency_s=0.01)) as server:
        for key, value in {
            "DAGSTER_HOME": str(home),
            "SYNTH_WAREHOUSE": str(tmp_path / "warehouse"),
            "SYNTH_SCHEMAS": str(scripted_schemas_dir),
            "SYNTH_PROFILE": str(profile_file(tmp_path, server.base_url)),
        }.items():
            monkeypatch.setenv(key, value)
        from synth_pipelines.jobs import resolved_synth_domain_job
        from synth_pipelines.pools import LLM_POOL

        instance = dg.DagsterInstance.get()
        domains = ["api_development", "data_analysis"]
        instance.add_dynamic_partitions("domain", domains)
        results: dict[str, dg.ExecuteJobResult] = {}

        def run(domain: str) -> None:
            with dg.execute_job(
                dg.reconstructable(resolved_synth_domain_job),
                instance=instance,
                run_config={"ops": {"problem_matrix": {"config": {"target_count": 4}}}},
                tags={"dagster/partition": domain},
            ) as result:
                results[domain] = result
                assert result.success, [e.message for e in result.all_events if e.is_failure]

        threads = [threading.Thread(target=run, args=(d,)) for d in domains]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert set(results) == set(domains)
        assert instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 1

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
    assert len(intervals) == 8
    for (_, e1, d1, k1), (s2, _, d2, k2) in itertools.pairwise(intervals):
        assert s2 >= e1 - 0.05, f"{d1}/{k1} overlapped {d2}/{k2}"
