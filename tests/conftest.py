from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# Nothing the suite does may show in the user's UI or warehouse: the Makefile exports the project's
# DAGSTER_HOME (what `make dev` shows) for every target, and the service reads SYNTH_* settings from
# the environment. The suite gets a throwaway instance and warehouse of its own instead.
_SUITE_DIR = Path(tempfile.mkdtemp(prefix="synth-tests-"))
os.environ["DAGSTER_HOME"] = str(_SUITE_DIR / "dagster_home")
(_SUITE_DIR / "dagster_home").mkdir()
# The project's instance settings (pools, run limits), so runs behave as under `make dev`.
shutil.copy(
    Path(__file__).resolve().parent.parent / "dagster.yaml", _SUITE_DIR / "dagster_home" / "dagster.yaml"
)
os.environ["SYNTH_WAREHOUSE"] = str(_SUITE_DIR / "warehouse")
for _name in (
    "SYNTH_STATE_DIR",
    "SYNTH_DUCKDB_PATH",
    "SYNTH_API_TOKEN",
    "SYNTH_ALLOWED_HOSTS",
    "SYNTH_DAGSTER_URL",
):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"


@pytest.fixture
def schemas_dir(tmp_path: Path) -> Path:
    d = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, d)
    return d


@pytest.fixture
def warehouse_root(tmp_path: Path) -> Path:
    return tmp_path / "warehouse"


@pytest.fixture
def scripted_backends(monkeypatch: pytest.MonkeyPatch):
    """Route every backend the factory builds to a ScriptedBackend (one per model name)."""
    from synth_pipelines.llm import factory
    from tests.scripted import ScriptedBackend

    made: dict[str, ScriptedBackend] = {}

    def backend_for(name, config, api_key=None):
        if name not in made:
            made[name] = ScriptedBackend(name, judge_score=5 if "judge" in name else None)
        return made[name]

    monkeypatch.setattr(factory, "backend_for", backend_for)
    return made


def plumbing_specs(folder: Path) -> None:
    """Rewrite every spec in ``folder`` with the plumbing settings ``scripted_schemas_dir`` explains."""
    import yaml

    for path in folder.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.setdefault("validation", {}).update(
            diversity_threshold=0.0,
            consensus_threshold=0.25,
            min_pass_rate=0.5,
            on_topic_threshold=-1.0,
            field_agreement_threshold=-1.0,
        )
        data.pop("rules", None)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def scripted_schemas_dir(schemas_dir: Path) -> Path:
    """The shipped specs for plumbing tests on the scripted provider: the diversity gate off (scripted
    replies reuse a 24-word vocabulary, so their embeddings are near each other by construction) and
    no spec rules (scripted replies pick an enum value at random, so a method-per-operation rule
    rejects most of them), and a fixed consensus threshold of 0.25 with min_pass_rate 0.5 (the
    scripted and fake-server judges score at random, and their test profiles carry no calibration,
    so `auto` would mean the design's 0.75), and no on-topic or cross-field agreement gate (random
    words are off topic, and one field unrelated to the next, by construction). Every gate is tested
    on its own with shipped settings."""
    plumbing_specs(schemas_dir)
    return schemas_dir


# ------------------------------------------------------------------------------ S3 (moto)
@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # One access-log line per S3 request would bury a failing test's own message in the report.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; credentials and endpoint the way a deployment sets them: environment only."""
    import boto3
    import fsspec

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()  # no filesystem cached with another test's endpoint
    name = f"synth-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------------------ scheduling
# Test files by the time they take (``pytest --durations=0``, 2026-12-03), longest first. `make test`
# hands whole files to the xdist workers in collection order (``--dist loadfile
# --no-loadscope-reorder``), so the long files start at once and the short ones fill in around them
# (longest-processing-time-first); xdist's own reordering, by number of tests, started the slowest
# files last. An unlisted file runs after these, in the usual order.
SLOWEST_FIRST = (
    "test_llama_server.py",
    "test_e2e.py",
    "test_backfill.py",
    "test_celery.py",
    "test_service.py",
    "test_staleness.py",
    "test_review.py",
    "test_safety.py",
    "test_dbt.py",
    "test_structured_modes.py",
    "test_concurrency.py",
    "test_scale.py",
    "test_shared_state.py",
    "test_text_checks.py",
    "test_train.py",
    "test_openai_compat.py",
    "test_data_safety.py",
    "test_assets.py",
)


# Tests of 5 seconds or more on 2 cores (same measurement): marked ``slow``, which `make test-fast`
# leaves out (`make test` runs everything). Each still runs in `make test` and in CI.
SLOW_TESTS = {
    "test_two_domains_one_in_four_shards_run_on_two_celery_workers_and_equal_a_single_process_run",
    "test_three_shards_make_the_same_rows_as_one",
    "test_a_failed_shard_keeps_the_others_rows_and_the_rerun_calls_only_for_its_items",
    "test_shards_share_the_runs_budget",
    "test_the_pipeline_drops_a_leaked_example_or_flags_it_and_the_check_blocks",
    "test_the_exported_file_loads_with_datasets_and_trains_minilm_for_two_steps",
    "test_the_pipeline_records_real_results_rejects_failed_traces_and_exports_openai_tool_calls",
    "test_tools_imported_from_this_projects_mcp_server_are_called_for_real",
    "test_two_workers_under_a_shared_rpm_limit_never_exceed_it_at_the_endpoint",
    "test_a_domain_end_to_end_through_the_openai_profile",
    "test_backfill_runs_queue_for_the_pool_in_the_daemon",
    "test_two_partitions_in_parallel_processes",
    "test_api_launches_polls_searches_records_and_exports",
    "test_within_30_seconds_of_an_edit_the_running_daemon_shows_the_domain_stale",
    "test_mcp_tools_generate_and_search",
    "test_onnx_backends_match_torch",
    "test_openvino_serves_within_the_cosine_bar",
    "test_openvino_whose_default_precision_cannot_compile_serves_f32",
    "test_dbt_models_and_tests_run_as_dagster_assets",
    "test_auto_finds_the_mode_the_server_takes_and_reuses_it",
    "test_validation_rejects_an_erroring_row_at_stage_rules_through_the_service",
    "test_ann_recall_at_10_on_20k_vectors",
    "test_review_labels_calibrate_the_domain_and_its_runs_say_so",
    "test_held_out_kinds_of_text_stay_within_the_budget",
    "test_benchmark_report_matches_the_server_and_the_cache",
    "test_real_text_from_this_machine_is_not_degenerate",
    "test_full_graph_with_the_warehouse_on_s3",
    "test_the_review_page_labels_rows_from_the_keyboard_in_a_real_browser",
    "test_train_a_user_module_records_its_score_and_saves_a_loadable_program",
    "test_dbt_source_tests_catch_a_consensus_violation",
    "test_a_bad_program_file_is_a_one_line_error",
    "test_rerun_keeps_its_examples_and_rejects_paraphrases_of_remembered_ones",
    "test_sigkill_mid_generation_then_resume",
    "test_full_graph_on_scripted_provider",
    "test_plain_packages_import_without_dagster",
    "test_rule_fuzz_is_refused_in_one_line_or_runs_within_limits",
    "test_a_spec_edit_marks_exactly_that_domains_assets_stale",
    "test_whole_graph_against_endpoint_and_key_never_leaks",
    "test_500_retries_then_falls_back_to_next_model",
    "test_timeout_is_retried",
    "test_synth_generate_completes_every_item_through_thirty_percent_faults",
    "test_miprov2_compiles_with_threads",
    "test_generation_prefetches_exactly_what_validation_and_embeddings_look_up",
    "test_example_index_asset_builds_only_past_min_rows_and_search_uses_it",
    "test_statistical_timestamps_do_not_depend_on_the_machine_time_zone",
    "test_full_graph_with_the_shipped_diversity_threshold",
    # These share test_review.py's module fixture, a generated and reviewed domain (~20 s).
    "test_labels_are_recorded_checked_and_kept_per_reviewer",
    "test_the_rows_are_built_once_per_version_of_the_partition_files",
    "test_calibrating_without_labels_is_a_clear_error",
    "test_the_api_refuses_what_it_cannot_take",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file stays in order
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


_EXIT_STATUS: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS["code"] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process once pytest has printed its summary.

    duckdb's nanobind bindings print pages of "leaked instance" warnings during interpreter teardown
    after a long session; skipping teardown keeps pytest's summary the last thing on the screen.
    """
    import sys

    if "code" in _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS["code"])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a thread on a free loopback port; yields its base URL, stops it after."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server for the module's tests. Skipped where Debian's redis-server is not
    installed, unless SYNTH_REQUIRE_REDIS is set (CI installs it and sets it: there it must run)."""
    from synth_pipelines.testing.redis_server import redis_server, redis_server_binary

    if redis_server_binary() is None and not os.environ.get("SYNTH_REQUIRE_REDIS"):
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    with redis_server() as url:
        yield url
