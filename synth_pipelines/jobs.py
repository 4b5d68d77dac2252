"""Jobs: the whole per-domain graph as one partitioned job (what sensors, backfills and the CLI launch)."""

import dagster as dg

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.partitions import domain_partitions

synth_domain_job = dg.define_asset_job(
    name="synth_domain",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    partitions_def=domain_partitions,
    # In-process on purpose: the assets form a chain, so step subprocesses would only add an import
    # of the code location per step. Concurrency comes from async calls inside the model-calling
    # assets, and across domains from concurrent runs, which the instance queues by the `llm` pool
    # (run granularity: a waiting run waits in the daemon's queue, not in a spinning process).
    executor_def=dg.in_process_executor,
    description="Materialize the whole graph, schema to compiled program, for one domain partition.",
)
