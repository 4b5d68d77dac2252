"""A spec edit is visible in Dagster's own terms: the spec file is an observable source asset per
domain partition (data version = the file's SHA-256) that every asset of the domain depends on.

Tested through the instance and Dagster's GraphQL API (``staleStatus``, what the UI shows): an
unchanged spec leaves everything fresh; an edit, once the observation sensor has ticked, turns
exactly that domain's assets stale; and the spec sensor's run asks only for what is stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from synth_pipelines.assets.spec_file import latest_observed_version
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.sensors import domain_spec_sensor, spec_observation_sensor

DOMAIN = "api_development"
OTHER = "data_analysis"
# The first four assets are enough to see staleness and cheap on the scripted provider.
MADE = ["domain_schema", "corpus_chunks", "seed_problems", "problem_matrix"]
LATER = ["raw_generations", "validated_examples", "example_embeddings", "example_index", "compiled_program"]

STALE_QUERY = """
query Stale($keys: [AssetKeyInput!], $partition: String) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleStatus(partition: $partition)
    staleCauses(partition: $partition) { key { path } reason }
  }
}
"""


def _resources(root: Path, schemas: Path) -> dict:
    return {
        "warehouse": WarehouseResource(root=str(root), schemas_dir=str(schemas)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as made:
        yield made


def _made(instance: dg.DagsterInstance, root: Path, schemas: Path, domain: str) -> None:
    result = materialize_domain(
        domain, instance=instance, resources=_resources(root, schemas), skip=set(LATER), target_count=4
    )
    assert result.success


def _graphql_status(instance: dg.DagsterInstance, domain: str, assets: list[str]) -> dict[str, tuple]:
    """asset -> (staleStatus, its stale causes) as Dagster's GraphQL API (the UI) reports them."""
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            module_name="synth_pipelines.definitions", attribute="defs", working_directory=str(Path.cwd())
        ),
        location_name="synth_pipelines",
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        result = execute_dagster_graphql(
            workspace.create_request_context(),
            STALE_QUERY,
            {"keys": [{"path": [a]} for a in assets], "partition": domain},
        )
    return {
        node["assetKey"]["path"][-1]: (
            node["staleStatus"],
            sorted({f"{'/'.join(c['key']['path'])}: {c['reason']}" for c in node["staleCauses"]}),
        )
        for node in result.data["assetNodes"]
    }


def _observe(instance: dg.DagsterInstance, schemas: Path, root: Path | None = None) -> dg.SensorResult:
    warehouse = WarehouseResource(schemas_dir=str(schemas), **({"root": str(root)} if root else {}))
    context = dg.build_sensor_context(instance=instance, resources={"warehouse": warehouse})
    return spec_observation_sensor(context)


def test_a_spec_edit_marks_exactly_that_domains_assets_stale(
    instance: dg.DagsterInstance, warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    _made(instance, warehouse_root, scripted_schemas_dir, DOMAIN)
    _made(instance, warehouse_root, scripted_schemas_dir, OTHER)
    fresh = {a: ("FRESH", []) for a in MADE}
    assert _graphql_status(instance, DOMAIN, MADE) == fresh

    # An unchanged spec: the sensor records nothing and nothing turns stale.
    assert _observe(instance, scripted_schemas_dir, warehouse_root).asset_events == []
    assert _graphql_status(instance, DOMAIN, MADE) == fresh

    spec = scripted_schemas_dir / f"{DOMAIN}.yaml"
    spec.write_text(spec.read_text().replace("target_count:", "# a comment\ntarget_count:", 1))
    events = _observe(instance, scripted_schemas_dir, warehouse_root).asset_events
    assert [(e.asset_key.path[-1], e.partition) for e in events] == [("domain_spec_file", DOMAIN)]
    # The sensor's events are stored by the daemon after the tick; here, as the daemon does.
    for event in events:
        instance.report_runless_asset_event(event)

    assert _graphql_status(instance, DOMAIN, MADE) == {
        a: ("STALE", ["domain_spec_file: has a new data version"]) for a in MADE
    }
    assert _graphql_status(instance, OTHER, MADE) == fresh  # another domain is untouched
    # Observing the edited file again changes nothing more.
    assert _observe(instance, scripted_schemas_dir, warehouse_root).asset_events == []
    # Reverting the edit makes the old outputs current again.
    spec.write_text(spec.read_text().replace("# a comment\n", "", 1))
    for event in _observe(instance, scripted_schemas_dir, warehouse_root).asset_events:
        instance.report_runless_asset_event(event)
    assert _graphql_status(instance, DOMAIN, MADE) == fresh


def test_a_new_review_calibration_marks_exactly_the_gated_assets_stale(
    instance: dg.DagsterInstance, warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    """`synth calibrate --domain` writes the domain's calibration: domain_schema (which resolves the
    thresholds) turns stale, and the assets that do not use thresholds stay fresh."""
    from synth_pipelines.warehouse.storage import REVIEW_CALIBRATION_FILE, Warehouse

    _made(instance, warehouse_root, scripted_schemas_dir, DOMAIN)
    assert _observe(instance, scripted_schemas_dir, warehouse_root).asset_events == []
    Warehouse(warehouse_root).write_json(REVIEW_CALIBRATION_FILE.format(domain=DOMAIN), {"labels": 40})
    events = _observe(instance, scripted_schemas_dir, warehouse_root).asset_events
    assert [(e.asset_key.path[-1], e.partition) for e in events] == [("domain_review_calibration", DOMAIN)]
    for event in events:
        instance.report_runless_asset_event(event)
    status = _graphql_status(instance, DOMAIN, [*MADE, "validated_examples"])
    assert status["domain_schema"] == ("STALE", ["domain_review_calibration: has a new data version"])
    assert {a: status[a] for a in MADE[1:]} == {a: ("FRESH", []) for a in MADE[1:]}
    # validated_examples was never made here: missing, not stale (it depends on the calibration too).
    assert status["validated_examples"][0] == "MISSING"


def test_the_spec_sensor_reruns_only_what_the_change_made_stale(
    instance: dg.DagsterInstance, warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    import json

    _made(instance, warehouse_root, scripted_schemas_dir, DOMAIN)
    res = {"warehouse": WarehouseResource(schemas_dir=str(scripted_schemas_dir))}
    first = domain_spec_sensor(dg.build_sensor_context(instance=instance, resources=res))
    by_domain = {r.partition_key: r for r in first.run_requests}
    # The first four assets are made from this spec: the run asks only for the rest of the chain.
    assert [k.path[-1] for k in by_domain[DOMAIN].asset_selection] == LATER
    # A domain never made asks for everything.
    assert [k.path[-1] for k in by_domain[OTHER].asset_selection][:2] == ["domain_schema", "corpus_chunks"]

    spec = scripted_schemas_dir / f"{DOMAIN}.yaml"
    spec.write_text(spec.read_text() + "\n# edited\n")
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [DOMAIN, OTHER])
    again = domain_spec_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=res))
    (request,) = again.run_requests
    assert request.partition_key == DOMAIN
    assert [k.path[-1] for k in request.asset_selection] == MADE + LATER
    # The new version is observed in the same tick, before the run starts.
    assert [(e.partition, e.tags["dagster/data_version"]) for e in again.asset_events] == [
        (DOMAIN, json.loads(again.cursor)[DOMAIN]["hash"])
    ]


def test_a_run_records_the_spec_version_it_was_made_from(
    instance: dg.DagsterInstance, warehouse_root: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    from synth_pipelines.spec.loading import file_sha256

    assert latest_observed_version(instance, DOMAIN) is None
    _made(instance, warehouse_root, scripted_schemas_dir, DOMAIN)
    assert latest_observed_version(instance, DOMAIN) == file_sha256(scripted_schemas_dir / f"{DOMAIN}.yaml")


def test_entry_points_print_no_dagster_preview_or_beta_warnings() -> None:
    """What a newcomer sees from `synth --help` and loading the code location: no warning lines."""
    for code in (
        "import warnings; warnings.simplefilter('default'); import synth_pipelines.definitions",
        "import warnings; warnings.simplefilter('default'); from synth_pipelines.cli import app",
    ):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Warning" not in done.stderr, done.stderr[-2000:]


def test_the_observation_sensor_runs_by_default_often_enough_for_30_seconds() -> None:
    """The UI shows an edit within 30 s: the daemon ticks the sensor at most every 10 s, and it is on
    without anyone starting it (it only hashes files)."""
    from synth_pipelines.definitions import defs

    sensor = defs.resolve_sensor_def("spec_observation_sensor")
    assert sensor.minimum_interval_seconds == 10
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    job = defs.resolve_job_def("synth_domain")
    assert job.partitions_def is not None and job.partitions_def.name == DOMAIN_PARTITIONS_NAME
    # The job page shows the chain, not group boxes: one group for the spec file and every asset.
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in job.asset_layer.executable_asset_keys}
    assert groups == {"pipeline"}


def test_within_30_seconds_of_an_edit_the_running_daemon_shows_the_domain_stale(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real path: `dagster-daemon` (as `make dev` runs it) ticks the observation sensor; a spec
    edit shows in GraphQL ``staleStatus`` within 30 s, for that domain only."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    root = tmp_path / "warehouse"
    for key, value in {
        "DAGSTER_HOME": str(home),
        "SYNTH_WAREHOUSE": str(root),
        "SYNTH_SCHEMAS": str(scripted_schemas_dir),
    }.items():
        monkeypatch.setenv(key, value)
    instance = dg.DagsterInstance.get()
    _made(instance, root, scripted_schemas_dir, DOMAIN)
    # A second domain registered but never observed: its first observation tells us the sensor runs.
    instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [OTHER])
    bin_dir = Path(sys.executable).parent
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-m", "synth_pipelines.definitions"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while latest_observed_version(instance, OTHER) is None:
            assert time.monotonic() < deadline, "the daemon never ticked spec_observation_sensor"
            time.sleep(1)
        assert _graphql_status(instance, DOMAIN, MADE) == {a: ("FRESH", []) for a in MADE}

        spec = scripted_schemas_dir / f"{DOMAIN}.yaml"
        spec.write_text(spec.read_text() + "\n# edited\n")
        edited = time.monotonic()
        while True:
            status = _graphql_status(instance, DOMAIN, MADE)
            if all(s == "STALE" for s, _ in status.values()):
                print(f"stale {time.monotonic() - edited:.1f} s after the edit")
                break
            assert time.monotonic() - edited < 30, status
            time.sleep(1)
    finally:
        daemon.terminate()
        daemon.wait(30)
    assert _graphql_status(instance, OTHER, ["domain_schema"]) == {"domain_schema": ("MISSING", [])}
