"""Asset checks on the domain partitions. Blocking checks stop downstream assets when they fail.

Every threshold comes from the domain's spec (``validation``) or from the check's run config; every
check reports its measured value and threshold as metadata.
"""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from synth_pipelines.assets._common import load_materialized_spec
from synth_pipelines.assets.example_embeddings import example_embeddings
from synth_pipelines.assets.validated_examples import validated_examples
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import WarehouseResource
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation import gates
from synth_pipelines.validation.decontamination import build_index

# Warnings wait behind the gates: a Celery or multiprocess run starts the ready steps with the
# higher priority first (defaults: 5 for dagster-celery, 0 for dagster's own executors), so the
# blocking checks, which hold the downstream assets back, are not queued behind a warning such as
# the Great Expectations suite. The warnings go down rather than the gates up: Celery's Redis
# transport serves its lists 0-2, 3-5, 6-8, 9 in that order (lowest first, unlike RabbitMQ), and 4
# shares the default's list, so the submission order decides there too.
WARNING_CHECK_TAGS = {"dagster/priority": "-1", "dagster-celery/priority": "4"}

# What to try when a blocking check fails: the last line a user reads (``synth generate``, the UI).
HINTS = {
    "nothing_accepted": (
        "every row was rejected before the (skipped) validator panel: rejected_examples.fail_stage "
        "and fail_reasons say which gate and why"
    ),
    "schema_compliance": "stored rows no longer match the spec's fields: rematerialize validated_examples",
    "consensus_pass_rate": (
        "read the judges' reasons in rejected_examples (stage consensus), sharpen the spec's hints and "
        "field descriptions, or run synth calibrate for this profile"
    ),
    "no_exact_duplicates": "rematerialize validated_examples (it removes exact duplicates)",
    "no_eval_contamination": (
        "examples overlap an eval set: with decontamination.action drop, rematerialize validated_examples; "
        "with flag, the rows were kept on purpose: remove them or switch to drop"
    ),
    "review_agreement": (
        "the gate disagrees with your reviewers: run synth calibrate --domain <d> on their labels, "
        "then rematerialize the domain"
    ),
    "embedding_diversity": (
        "raise hints.temperature, add seed problems or matrix values, or run synth calibrate --diversity"
    ),
}


def _result(
    name: str,
    gate: gates.GateResult,
    *,
    comparison: str = ">=",
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    source: str = "required",
    hint: str | None = None,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=gate.passed,
        severity=severity,
        description=gate.describe(name, comparison),
        metadata={
            "measured": dg.MetadataValue.float(round(gate.value, 6)),
            "threshold": dg.MetadataValue.float(gate.threshold),
            "comparison": comparison,
            "threshold_source": source,
            **({"hint": hint} if hint else {}),
            **({"not_measured": gate.not_measured} if gate.not_measured else {}),
            "detail": dg.MetadataValue.json(json.loads(json.dumps(gate.detail, default=str))),
        },
    )


def _source(warehouse: WarehouseResource, domain: str, name: str, overridden: bool) -> str:
    """Where a check's threshold came from: run config, or what domain_schema recorded for the spec."""
    if overridden:
        return "set in the run config"
    return warehouse.get().threshold_source(domain, name) or f"spec validation.{name}"


def _rows(warehouse: WarehouseResource, asset: str, domain: str, columns: list[str]) -> list[dict]:
    """Only the columns a check reads: a check over 100,000 rows must not load every column."""
    # Pruned in the Parquet read itself: selecting after a full read held every column (the
    # validator_scores lists included) for a moment, a memory spike of the whole partition.
    table = warehouse.get().read_partition(asset, domain, columns=columns)
    return table.to_pylist() if table is not None else []


@dg.asset_check(asset=validated_examples, blocking=True, partitions_def=domain_partitions)
def schema_compliance(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Every stored example validates against the spec's compiled model (100% required)."""
    domain = context.partition_key
    spec = load_materialized_spec(warehouse.get(), domain)
    return _result(
        "schema compliance",
        gates.schema_compliance(
            spec, _rows(warehouse, "validated_examples", domain, ["example_id", "example_json"])
        ),
        hint=HINTS["schema_compliance"],
    )


class PassRateConfig(dg.Config):
    min_pass_rate: float | None = Field(
        default=None, ge=0, le=1, description="Override the spec's min_pass_rate."
    )


@dg.asset_check(asset=validated_examples, blocking=True, partitions_def=domain_partitions)
def consensus_pass_rate(
    context: dg.AssetCheckExecutionContext, config: PassRateConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Of the examples the validator models judged, the share that met the consensus threshold must
    reach ``validation.min_pass_rate`` (default 0.85)."""
    domain = context.partition_key
    spec = load_materialized_spec(warehouse.get(), domain)
    gate = gates.consensus_pass_rate(
        spec,
        _rows(warehouse, "validated_examples", domain, ["consensus"]),
        _rows(warehouse, "rejected_examples", domain, ["fail_stage"]),
        min_pass_rate=config.min_pass_rate,
    )
    return _result(
        "consensus pass rate",
        gate,
        source=_source(warehouse, domain, "min_pass_rate", config.min_pass_rate is not None),
        hint=HINTS["consensus_pass_rate"] if gate.not_measured is None else HINTS["nothing_accepted"],
    )


@dg.asset_check(asset=validated_examples, blocking=True, partitions_def=domain_partitions)
def no_exact_duplicates(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """No two stored examples share a normalized uniqueness key."""
    gate = gates.exact_duplicates(
        _rows(warehouse, "validated_examples", context.partition_key, ["dedup_key"])
    )
    return _result("exact duplicates", gate, comparison="<=", hint=HINTS["no_exact_duplicates"])


@dg.asset_check(asset=validated_examples, blocking=True, partitions_def=domain_partitions)
def no_eval_contamination(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """No stored example shares a word n-gram with an eval set the spec names
    (``decontamination.eval_sets``); reports the matches per eval set and which sets were checked."""
    domain = context.partition_key
    spec = load_materialized_spec(warehouse.get(), domain)
    decon = spec.decontamination
    if not decon.eval_sets:
        return _result(
            "eval contamination",
            gates.GateResult(passed=True, value=0, threshold=0, not_measured="the spec names no eval sets"),
            comparison="<=",
        )
    index = build_index(warehouse.schemas_dir, decon)
    rows = _rows(warehouse, "validated_examples", domain, ["example_id", "example_json"])
    overlaps = index.find([example_text(json.loads(r["example_json"]), decon.fields or None) for r in rows])
    per_set = {name: 0 for name in index.set_names}
    examples = []
    for row, overlap in zip(rows, overlaps, strict=True):
        if overlap is not None:
            per_set.update({name: per_set[name] + 1 for name in overlap.sets})
            examples.append({"example_id": row["example_id"], "sets": overlap.sets, "ngram": overlap.ngram})
    gate = gates.GateResult(
        passed=not examples,
        value=len(examples),
        threshold=0,
        detail={"per_eval_set": per_set, "eval_set_texts": index.texts_per_set, "examples": examples[:20]},
    )
    return _result("eval contamination", gate, comparison="<=", hint=HINTS["no_eval_contamination"])


@dg.asset_check(
    asset=validated_examples, blocking=False, partitions_def=domain_partitions, op_tags=WARNING_CHECK_TAGS
)
def target_count_reached(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The number of accepted examples reaches the matrix's total target (a warning, not a gate)."""
    domain = context.partition_key
    target = sum(int(r["target"]) for r in _rows(warehouse, "problem_matrix", domain, ["target"]))
    gate = gates.target_reached(len(_rows(warehouse, "validated_examples", domain, ["example_id"])), target)
    return _result("accepted examples", gate, severity=dg.AssetCheckSeverity.WARN)


@dg.asset_check(
    asset=validated_examples, blocking=False, partitions_def=domain_partitions, op_tags=WARNING_CHECK_TAGS
)
def review_agreement(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """How well the gate agrees with the domain's review labels (``synth serve``, ``/review/<d>``):
    Cohen's kappa of its verdict on each labelled row, as the row is now, against the reviewers'
    current labels. WARN below ``validation.min_review_kappa`` (0.2); not measured under 10 labels."""
    from synth_pipelines.validation.review import read_labels, review_agreement, review_items

    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    labels = read_labels(wh, domain)
    labelled = sorted({label["example_id"] for label in labels})
    rows = {}
    for asset in ("validated_examples", "rejected_examples"):
        table = wh.read_partition(asset, domain) if labelled else None
        # Only the labelled rows become Python objects: the check stays cheap on 100,000 rows.
        rows[asset] = (
            table.filter(pc.is_in(table.column("example_id"), pa.array(labelled))).to_pylist()
            if table
            else []
        )
    items = review_items(rows["validated_examples"], rows["rejected_examples"])
    gate = review_agreement(labels, items, spec.validation.min_review_kappa)
    return _result(
        "review agreement (kappa)",
        gate,
        severity=dg.AssetCheckSeverity.WARN,
        source=_source(warehouse, domain, "min_review_kappa", False),
        hint=None if gate.passed else HINTS["review_agreement"],
    )


class DiversityConfig(dg.Config):
    diversity_threshold: float | None = Field(
        default=None, ge=0, le=2, description="Override the spec's diversity_threshold."
    )


@dg.asset_check(asset=example_embeddings, blocking=True, partitions_def=domain_partitions)
def embedding_diversity(
    context: dg.AssetCheckExecutionContext, config: DiversityConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Mean pairwise cosine distance of the domain's embeddings reaches ``validation.diversity_threshold``."""
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    stats = wh.diversity_stats(domain)
    threshold = (
        spec.validation.min_diversity if config.diversity_threshold is None else config.diversity_threshold
    )
    gate = gates.diversity(stats.get("mean_pairwise_cosine_distance"), threshold, examples=stats.get("n"))
    gate.detail = stats
    return _result(
        "mean pairwise cosine distance",
        gate,
        source=_source(warehouse, domain, "diversity_threshold", config.diversity_threshold is not None),
        hint=HINTS["embedding_diversity"],
    )


@dg.asset_check(
    asset=validated_examples, blocking=False, partitions_def=domain_partitions, op_tags=WARNING_CHECK_TAGS
)
def great_expectations_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """A Great Expectations suite generated from the spec (types, bounds, enums, patterns, not-null,
    uniqueness), run over the stored examples; GE's statistics and failing expectations are in the
    metadata."""
    from synth_pipelines.validation.ge_suite import run_suite_cached

    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    rows = _rows(warehouse, "validated_examples", domain, ["example_json"])
    outcome = run_suite_cached(spec, [r["example_json"] for r in rows], wh.check_cache_dir)
    stats = outcome["statistics"]
    failing = [r for r in outcome["results"] if not r["success"]]
    return dg.AssetCheckResult(
        passed=outcome["success"],
        description=(
            f"{stats.get('successful_expectations')}/{stats.get('evaluated_expectations')} expectations met"
        ),
        metadata={
            "suite": outcome["suite"],
            # The same spec and data were checked before: GE's verdict is reused, not recomputed.
            "result_from_cache": bool(outcome["cached"]),
            "evaluated_expectations": int(stats.get("evaluated_expectations") or 0),
            "successful_expectations": int(stats.get("successful_expectations") or 0),
            "success_percent": dg.MetadataValue.float(float(stats.get("success_percent") or 0.0)),
            "failing_expectations": dg.MetadataValue.json(failing),
            "results": dg.MetadataValue.md(
                "| expectation | column | ok | unexpected |\n|---|---|---|---|\n"
                + "\n".join(
                    f"| {r['expectation']} | {r['column']} | {'✓' if r['success'] else '✗'} | "
                    f"{r['unexpected'] if r['unexpected'] is not None else ''}"
                    f"{' (' + r['error'] + ')' if r.get('error') else ''} |"
                    for r in outcome["results"]
                )
            ),
        },
    )


QUALITY_CHECKS = [
    schema_compliance,
    consensus_pass_rate,
    no_exact_duplicates,
    no_eval_contamination,
    target_count_reached,
    review_agreement,
    great_expectations_suite,
    embedding_diversity,
]
