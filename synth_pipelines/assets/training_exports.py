"""Training exports (SFT, DPO, QA, GRPO-verifiable), each an asset downstream of ``validated_examples``.

Written to ``<warehouse>/exports/<format>/domain=<d>/`` as Parquet + JSONL with a dataset card
(``README.md``). Materialize the ones you need; the spec's ``training_format`` is the recommended one.
"""

import dagster as dg

from synth_pipelines.assets._common import load_materialized_spec, markdown_table
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.assets.validated_examples import validated_examples
from synth_pipelines.exports.training import ExportFormat, build_export
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.warehouse.storage import StorageError

GROUP = "exports"


def _export(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, fmt: ExportFormat
) -> dg.MaterializeResult:
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    out_dir = wh.root / "exports" / fmt / f"domain={domain}"
    try:
        result = build_export(wh, spec, fmt, out_dir, run_ids=[context.run_id])
    except (ValueError, StorageError) as e:
        raise dg.Failure(description=str(e)) from e
    table = wh.read_partition("validated_examples", domain)
    return dg.MaterializeResult(
        metadata={
            "rows": result.rows,
            "splits": dg.MetadataValue.json(result.splits),
            "skipped": dg.MetadataValue.json(result.skipped),
            "recommended": fmt == spec.training_format,
            "parquet": dg.MetadataValue.path(result.parquet),
            "jsonl": dg.MetadataValue.path(result.jsonl),
            "dataset_card": dg.MetadataValue.path(result.card),
            "source_rows": table.num_rows if table is not None else 0,
            "preview": markdown_table(result.preview, ["id", "split"], limit=3),
        }
    )


@dg.asset(
    partitions_def=domain_partitions,
    group_name=GROUP,
    deps=[validated_examples, domain_spec_file],
    kinds={"parquet", "jsonl"},
)
def sft_export(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Supervised fine-tuning data (grain: one chat per validated example): system = the domain
    description, user = the program inputs, assistant = the program outputs; deterministic splits."""
    return _export(context, warehouse, "sft")


@dg.asset(
    partitions_def=domain_partitions,
    group_name=GROUP,
    deps=[validated_examples, domain_spec_file],
    kinds={"parquet", "jsonl"},
)
def dpo_export(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Preference pairs (grain: one pair per generation prompt with >= 2 judged candidates): chosen =
    best validator consensus, rejected = worst; identical, tied or both-below-threshold pairs skipped."""
    return _export(context, warehouse, "dpo")


@dg.asset(
    partitions_def=domain_partitions,
    group_name=GROUP,
    deps=[validated_examples, domain_spec_file],
    kinds={"parquet", "jsonl"},
)
def qa_export(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Question/answer pairs (grain: one per validated example): question = inputs, answer = outputs."""
    return _export(context, warehouse, "qa")


@dg.asset(
    partitions_def=domain_partitions,
    group_name=GROUP,
    deps=[validated_examples, domain_spec_file],
    kinds={"parquet", "jsonl"},
)
def grpo_export(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Verifiable problems for GRPO (grain: one per example whose answer checks out): the spec's
    ``verification.expression_field`` is evaluated in a sandboxed subprocess with a timeout and must
    equal ``verification.answer_field``. Empty for domains without a ``verification`` section."""
    return _export(context, warehouse, "grpo-verifiable")


EXPORT_ASSETS = [sft_export, dpo_export, qa_export, grpo_export]
