"""Spec files and Dagster: ``spec_observation_sensor`` observes every spec file (so an edit marks
the domain's assets stale in the UI within seconds); ``domain_spec_sensor`` turns new or changed
files in ``schemas/`` into partitions and runs of exactly the assets the change made stale."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import extract_data_provenance_from_entry
from pydantic import BaseModel

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.spec_file import (
    CALIBRATION_ASSET,
    SPEC_FILE_ASSET,
    calibration_version,
    latest_observed_version,
    spec_observation,
    spec_versions,
)
from synth_pipelines.assets.statistical_data import STATISTICAL_ASSETS
from synth_pipelines.jobs import job_name_for, synth_domain_job, synth_statistical_job
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL, ensure_pool_limit
from synth_pipelines.spec.loading import discover_specs, load_spec
from synth_pipelines.spec.model import SpecError
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name


class SpecRun(BaseModel):
    """One run to request: the domain, the spec file's hash, and how many changes of that domain's
    spec this is (so that reverting to an earlier file is a new run, not a duplicate key)."""

    domain: str
    file_hash: str
    sequence: int
    job_name: str = "synth_domain"  # synth_statistical for timeseries and events specs

    @property
    def run_key(self) -> str:
        return f"{self.domain}:{self.sequence}:{self.file_hash[:16]}"


class SpecPlan(BaseModel):
    """What one sensor tick decided: partitions to add, runs to request, files skipped (and why)."""

    new_partitions: list[str]
    runs: list[SpecRun]
    skipped: dict[str, str]
    cursor: dict[str, dict[str, Any]]


def _cursor_entry(value: Any) -> dict[str, Any]:
    # Cursors written before the sequence existed held the bare hash.
    return {"hash": value, "sequence": 1} if isinstance(value, str) else dict(value)


def plan_spec_runs(
    schemas_dir: str | Path, existing_partitions: set[str], cursor: dict[str, Any]
) -> SpecPlan:
    """Pure decision logic: which valid specs are new or changed since the cursor
    (domain -> {hash, sequence})."""
    new_partitions: list[str] = []
    runs: list[SpecRun] = []
    skipped: dict[str, str] = {}
    next_cursor = {domain: _cursor_entry(value) for domain, value in cursor.items()}
    for domain, path in discover_specs(schemas_dir).items():
        try:
            validate_domain_name(domain, source=str(path))
            loaded = load_spec(path)
        except (UnsafeDomainError, SpecError) as e:
            skipped[str(path)] = str(e)
            continue
        if domain not in existing_partitions:
            new_partitions.append(domain)
        seen = next_cursor.get(domain)
        if seen is None or seen["hash"] != loaded.file_hash:
            sequence = (seen["sequence"] if seen else 0) + 1
            runs.append(
                SpecRun(
                    domain=domain,
                    file_hash=loaded.file_hash,
                    sequence=sequence,
                    job_name=job_name_for(loaded.spec.type),
                )
            )
            next_cursor[domain] = {"hash": loaded.file_hash, "sequence": sequence}
    return SpecPlan(new_partitions=new_partitions, runs=runs, skipped=skipped, cursor=next_cursor)


def spec_stale_assets(
    instance: dg.DagsterInstance, domain: str, version: str, assets: Sequence[dg.AssetsDefinition]
) -> list[dg.AssetKey]:
    """The assets (of ``assets``, in their order) a run for ``domain`` at spec ``version`` has to
    make: those never materialized for the partition, those made from another version of the spec
    file (Dagster's recorded input data version of ``domain_spec_file``), and every asset downstream
    of one of them. After a completed run nothing is left; after a run that failed half way, only
    what it did not finish."""
    keys = [key for definition in assets for key in definition.keys]
    parents = {key: set(definition.dependency_keys) for definition in assets for key in definition.keys}
    stale: list[dg.AssetKey] = []
    for key in keys:
        record = instance.get_latest_data_version_record(key, partition_key=domain)
        provenance = extract_data_provenance_from_entry(record.event_log_entry) if record else None
        made_from = provenance.input_data_versions.get(SPEC_FILE_ASSET) if provenance else None
        if made_from is None or made_from.value != version or parents[key] & set(stale):
            stale.append(key)
    return stale


@dg.sensor(
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Observes every domain's spec file and review calibration (SHA-256) so that a change "
    "marks the assets that use it stale.",
)
def spec_observation_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    """Observes the spec file and the review calibration of every registered domain every 10
    seconds (running by default; it only hashes files and never starts a run).

    A spec file whose SHA-256 differs from the version last observed is recorded as a new
    observation of ``domain_spec_file`` for that partition, so the UI and GraphQL ``staleStatus``
    mark the domain's assets stale ("has a new dependency data version") within seconds of the
    edit; a new ``synth calibrate --domain`` result likewise for ``domain_review_calibration``, which
    marks ``domain_schema`` and ``validated_examples`` stale. An unchanged file records nothing.
    ``domain_spec_sensor`` (off by default) is what reruns them."""
    domains = context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME)
    wh = warehouse.get()
    events = []
    for domain, version in sorted(spec_versions(warehouse.schemas_dir, domains).items()):
        if latest_observed_version(context.instance, domain) != version:
            context.log.info(
                f"{domain}: spec file now sha256 {version[:12]}; its assets are stale until rerun"
            )
            events.append(spec_observation(domain, version))
    for domain in sorted(domains):
        calibrated = calibration_version(wh, domain)
        if latest_observed_version(context.instance, domain, CALIBRATION_ASSET) != calibrated:
            context.log.info(
                f"{domain}: review calibration now {calibrated[:12]}; its gated assets are stale"
            )
            events.append(spec_observation(domain, calibrated, CALIBRATION_ASSET))
    return dg.SensorResult(asset_events=events)


@dg.sensor(
    jobs=[synth_domain_job, synth_statistical_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def domain_spec_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    """Watches ``schemas/`` for new or changed domain specs.

    Adds a ``domain`` partition for each new valid spec and requests one run per change of a spec
    file (``synth_statistical`` for timeseries and events specs), of the assets that change made
    stale (``spec_stale_assets``: not yet made from this version of the file, and what depends on
    them; the whole graph after an edit, only the unfinished rest after a run that failed half
    way). It records the file's new version as an observation first, so the run's assets record it
    as their input. The run key is the domain, the number of the change and the file's hash,
    so the same file never triggers twice in a row, and a spec reverted to an earlier version still
    runs. Invalid specs and unsafe file names are skipped with the validation message in the log.
    It also registers the model pool at the instance's default limit, so that the first runs it
    (or a backfill) queues already wait for the pool.
    The cursor (JSON, domain -> {hash, sequence}) keeps ticks cheap and idempotent.
    """
    if ensure_pool_limit(context.instance):
        context.log.info(f"registered the {LLM_POOL!r} pool at the instance's default limit")
    cursor = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME))
    plan = plan_spec_runs(warehouse.schemas_dir, existing, cursor)
    for path, reason in plan.skipped.items():
        context.log.warning(f"skipping {path}: {reason}")
    for run in plan.runs:
        context.log.info(
            f"requesting a run for {run.domain} (spec change {run.sequence}, sha256 {run.file_hash[:12]})"
        )
    requests = []
    for run in plan.runs:
        assets = STATISTICAL_ASSETS if run.job_name == synth_statistical_job.name else PIPELINE_ASSETS
        selection = spec_stale_assets(context.instance, run.domain, run.file_hash, assets)
        if selection:
            requests.append((run, selection))
        else:
            context.log.info(f"{run.domain}: every asset is already made from this spec; no run")
    return dg.SensorResult(
        asset_events=[spec_observation(run.domain, run.file_hash) for run in plan.runs],
        run_requests=[
            dg.RunRequest(
                run_key=run.run_key,
                job_name=run.job_name,
                partition_key=run.domain,
                asset_selection=selection,
                tags={
                    "synth/trigger": "domain_spec_sensor",
                    "synth/domain": run.domain,
                    "synth/spec_hash": run.file_hash[:16],
                },
            )
            for run, selection in requests
        ],
        dynamic_partitions_requests=(
            [dg.AddDynamicPartitionsRequest(DOMAIN_PARTITIONS_NAME, plan.new_partitions)]
            if plan.new_partitions
            else []
        ),
        cursor=json.dumps(plan.cursor, sort_keys=True),
    )
