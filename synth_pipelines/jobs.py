"""Jobs: the whole per-domain graph as one partitioned job (what sensors, backfills and the CLI launch)."""

import dagster as dg

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.partitions import domain_partitions

synth_domain_job = dg.define_asset_job(
    name="synth_domain",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    partitions_def=domain_partitions,
    # Each run executes its steps in subprocesses; runs for several domains (a backfill) share the
    # model-calling `llm` pool, whose limit the instance enforces across runs.
    executor_def=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    description="Materialize the whole graph, schema to compiled program, for one domain partition.",
)
