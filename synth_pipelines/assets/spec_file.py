"""``domain_spec_file``: each domain's spec YAML as an observable source asset, so that Dagster itself
knows when a spec changed.

Its data version (per ``domain`` partition) is the SHA-256 of the file's bytes. Every asset that
reads the spec depends on it directly, and Dagster records the version each materialization was
made from; after an edit, the next observation carries a new version and the UI (and GraphQL
``staleStatus``) marks exactly that domain's assets stale, with "has a new dependency data version"
as the cause. An unchanged file observes the same version: nothing turns stale.

Observations come from ``spec_observation_sensor`` (every 10 s, running by default), from every run
this project launches (before its first asset), and from ``domain_schema`` itself (the safety net for
a run launched from elsewhere), and from "Observe sources" in the UI.
"""

from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from synth_pipelines.assets._common import PIPELINE_GROUP
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME, domain_partitions
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.spec.loading import discover_specs, file_sha256

# Dagster's tag for an observation's data version (what ``DataVersion`` sets on an observation).
DATA_VERSION_TAG = "dagster/data_version"
SPEC_FILE_ASSET = dg.AssetKey("domain_spec_file")


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


def spec_observation(domain: str, version: str) -> dg.AssetObservation:
    """The observation of one domain's spec file at ``version``."""
    return dg.AssetObservation(
        asset_key=SPEC_FILE_ASSET,
        partition=domain,
        tags={DATA_VERSION_TAG: version},
        metadata={"sha256": version},
    )


def latest_observed_version(instance: dg.DagsterInstance, domain: str) -> str | None:
    """The data version last observed for ``domain``'s spec file, or None."""
    record = instance.get_latest_data_version_record(SPEC_FILE_ASSET, partition_key=domain)
    if record is None or record.asset_observation is None:
        return None
    return record.asset_observation.tags.get(DATA_VERSION_TAG)


def observe_spec(instance: dg.DagsterInstance, schemas_dir: str | Path, domain: str) -> str | None:
    """Record the spec file's current version for ``domain`` on the instance when it differs from
    the last one observed (so a run launched next records it as its input). Returns the version."""
    version = spec_versions(schemas_dir, [domain]).get(domain)
    if version is not None and latest_observed_version(instance, domain) != version:
        instance.report_runless_asset_event(spec_observation(domain, version))
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
