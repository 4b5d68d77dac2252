"""``domain_spec_file`` and ``domain_review_calibration``: each domain's spec YAML and its gate
calibration from review labels as observable source assets, so that Dagster itself knows when
either changed.

Its data version (per ``domain`` partition) is the SHA-256 of the file's bytes. Every asset that
reads the spec depends on it directly, and Dagster records the version each materialization was
made from; after an edit, the next observation carries a new version and the UI (and GraphQL
``staleStatus``) marks exactly that domain's assets stale, with "has a new dependency data version"
as the cause. An unchanged file observes the same version: nothing turns stale.

``domain_review_calibration`` (data version = the SHA-256 of the domain's calibration file from
``synth calibrate --domain``, or ``uncalibrated``) is a dependency of the two assets that use it:
``domain_schema`` (it resolves the thresholds) and ``validated_examples`` (it applies them). A new
calibration marks exactly those stale.

Observations come from ``spec_observation_sensor`` (every 10 s, running by default), from every run
this project launches (before its first asset), and from ``domain_schema`` itself (the safety net for
a run launched from elsewhere), and from "Observe sources" in the UI.
"""

import hashlib
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from synth_pipelines.assets._common import PIPELINE_GROUP
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME, domain_partitions
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.spec.loading import discover_specs, file_sha256
from synth_pipelines.warehouse.storage import REVIEW_CALIBRATION_FILE, Warehouse

# Dagster's tag for an observation's data version (what ``DataVersion`` sets on an observation).
DATA_VERSION_TAG = "dagster/data_version"
SPEC_FILE_ASSET = dg.AssetKey("domain_spec_file")
CALIBRATION_ASSET = dg.AssetKey("domain_review_calibration")
UNCALIBRATED = "uncalibrated"


def spec_versions(schemas_dir: str | Path, domains: Iterable[str] | None = None) -> dict[str, str]:
    """domain -> SHA-256 of its spec file, for the given domains (all specs when None) that have one.
    A file that cannot be read is left out (the domain's ``domain_schema`` reports why)."""
    found = discover_specs(schemas_dir)
    wanted = found.keys() if domains is None else [d for d in domains if d in found]
    versions: dict[str, str] = {}
    for domain in wanted:
        try:
            versions[domain] = file_sha256(found[domain])
        except OSError:
            continue
    return versions


def calibration_version(warehouse: Warehouse, domain: str) -> str:
    """SHA-256 of the domain's review calibration file, or ``uncalibrated`` when it has none."""
    path = warehouse.file(REVIEW_CALIBRATION_FILE, domain)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else UNCALIBRATED
    except OSError:
        return UNCALIBRATED


def spec_observation(domain: str, version: str, asset: dg.AssetKey = SPEC_FILE_ASSET) -> dg.AssetObservation:
    """The observation of one domain's spec file (or review calibration) at ``version``."""
    return dg.AssetObservation(
        asset_key=asset, partition=domain, tags={DATA_VERSION_TAG: version}, metadata={"sha256": version}
    )


def latest_observed_version(
    instance: dg.DagsterInstance, domain: str, asset: dg.AssetKey = SPEC_FILE_ASSET
) -> str | None:
    """The data version last observed for ``domain``'s spec file (or review calibration), or None."""
    record = instance.get_latest_data_version_record(asset, partition_key=domain)
    if record is None or record.asset_observation is None:
        return None
    return record.asset_observation.tags.get(DATA_VERSION_TAG)


def observe_spec(
    instance: dg.DagsterInstance, schemas_dir: str | Path, domain: str, warehouse: Warehouse | None = None
) -> str | None:
    """Record the spec file's current version for ``domain`` (and, with ``warehouse``, its review
    calibration's) on the instance where it differs from the last one observed, so that a run
    launched next records them as its inputs. Returns the spec's version."""
    version = spec_versions(schemas_dir, [domain]).get(domain)
    if version is not None and latest_observed_version(instance, domain) != version:
        instance.report_runless_asset_event(spec_observation(domain, version))
    if warehouse is not None:
        calibrated = calibration_version(warehouse, domain)
        if latest_observed_version(instance, domain, CALIBRATION_ASSET) != calibrated:
            instance.report_runless_asset_event(spec_observation(domain, calibrated, CALIBRATION_ASSET))
    return version


@dg.observable_source_asset(
    key=SPEC_FILE_ASSET,
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    description="The domain's spec YAML in the schemas folder; data version = SHA-256 of the file.",
)
def domain_spec_file(
    context: dg.OpExecutionContext, warehouse: WarehouseResource
) -> dg.DataVersionsByPartition:
    """Observe every registered domain's spec file: its data version is the file's SHA-256."""
    domains = context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME)
    versions = spec_versions(warehouse.schemas_dir, domains)
    return dg.DataVersionsByPartition({d: dg.DataVersion(v) for d, v in versions.items()})


@dg.observable_source_asset(
    key=CALIBRATION_ASSET,
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    description="The domain's gate calibration from its review labels (synth calibrate --domain); "
    "data version = SHA-256 of the file, or 'uncalibrated'.",
)
def domain_review_calibration(
    context: dg.OpExecutionContext, warehouse: WarehouseResource
) -> dg.DataVersionsByPartition:
    """Observe every registered domain's review calibration: its data version is the file's SHA-256."""
    wh = warehouse.get()
    domains = context.instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME)
    return dg.DataVersionsByPartition({d: dg.DataVersion(calibration_version(wh, d)) for d in domains})
