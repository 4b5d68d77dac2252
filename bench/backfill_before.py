"""The code location as it was before run-granularity pools (for ``make bench-backfill`` only):
dbt loaded with the pipeline, and the domain job's steps in subprocesses (multiprocess executor)."""

import dagster as dg

import synth_pipelines.dbt_definitions  # noqa: F401 - dbt on the import path, as the old location had it
from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.assets.checks import QUALITY_CHECKS
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources.settings import default_resources

synth_domain_job = dg.define_asset_job(
    name="synth_domain",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    partitions_def=domain_partitions,
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)

defs = dg.Definitions(
    assets=PIPELINE_ASSETS,
    asset_checks=QUALITY_CHECKS,
    jobs=[synth_domain_job],
    resources=default_resources(),
)
