"""Arrow schemas of every table the pipeline writes. The same columns for every domain, so one glob over
all partitions reads cleanly; a domain's typed example columns come from its spec
(see ``spec.example_schema``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

CORPUS_CHUNKS = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),  # "row" (a table row) or "text" (a span of a text file)
        ("start", pa.int64()),  # row number, or character offset in the file
        ("end", pa.int64()),
        ("text", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("field_value", pa.string()),
        ("entities", pa.int64()),
        ("sampled", pa.bool_()),
        ("sample_rank", pa.int64()),
    ]
)

SEED_PROBLEMS = pa.schema(
    [
        ("seed_id", pa.string()),
        ("problem", pa.string()),
        ("source", pa.string()),
        # The corpus chunk a grounded seed came from (spec seed_source): id, file, offsets, excerpt.
        ("chunk_id", pa.string()),
        ("chunk_source", pa.string()),
        ("chunk_start", pa.int64()),
        ("chunk_end", pa.int64()),
        ("chunk_excerpt", pa.string()),
        # The matrix conditions a generated seed was asked for (JSON; null for listed seeds).
        ("conditions_json", pa.string()),
    ]
)

PROBLEM_MATRIX = pa.schema(
    [
        ("cell_id", pa.string()),
        ("conditions_json", pa.string()),
        ("complexity", pa.string()),
        ("seed_id", pa.string()),
        ("target", pa.int64()),
        ("weak", pa.bool_()),
        # Techniques (base | variation | adversarial | scenario:<factor>) and the row's own problem.
        ("technique", pa.string()),
        ("variant", pa.string()),
        ("capability", pa.string()),
        ("problem", pa.string()),
        ("parent_problem", pa.string()),
        # How the base row's problem fits the cell's conditions: tagged | mentions | neutral | derived.
        ("seed_match", pa.string()),
    ]
)

PROVENANCE = [
    ("example_id", pa.string()),
    ("cell_id", pa.string()),
    ("seed_id", pa.string()),
    ("problem", pa.string()),
    ("complexity", pa.string()),
    ("conditions_json", pa.string()),
    ("generator_model", pa.string()),
    ("prompt_hash", pa.string()),
    ("temperature", pa.float64()),
    ("seed", pa.int64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("latency_s", pa.float64()),
    ("attempt", pa.int64()),
    ("cache_hit", pa.bool_()),
    ("created_at", pa.string()),
    # How the schema reached the generator: json_schema | json_object | tools | prompt (endpoints),
    # grammar (embedded llama.cpp). Last, so files written before it read by position too.
    ("structured_output", pa.string()),
    # Lineage of the problem: base | variation | adversarial | scenario:<factor>, and the seed
    # problem a technique row was derived from (null for base rows).
    ("technique", pa.string()),
    ("parent_problem", pa.string()),
    # The corpus chunk the example is grounded in (through its seed), when the spec has seed_source.
    ("chunk_id", pa.string()),
    ("chunk_source", pa.string()),
    ("chunk_start", pa.int64()),
    ("chunk_end", pa.int64()),
]

RAW_GENERATIONS = pa.schema(
    [
        *PROVENANCE,
        ("status", pa.string()),
        ("example_json", pa.string()),
        ("error", pa.string()),
        # "reply": the model answered unusably; "provider": no answer (retried on a rerun).
        ("failure_kind", pa.string()),
        ("raw_text", pa.string()),
    ]
)

VALIDATOR_SCORE = pa.struct(
    [
        ("model", pa.string()),
        ("weight", pa.float64()),
        ("score", pa.float64()),
        ("criteria_json", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)

JUDGED = [
    ("example_json", pa.string()),
    ("dedup_key", pa.string()),
    ("consensus", pa.float64()),
    ("consensus_threshold", pa.float64()),
    ("validator_spread", pa.float64()),
    ("validator_scores", pa.list_(VALIDATOR_SCORE)),
    ("validators_skipped", pa.int64()),
    ("replaced_example_ids", pa.list_(pa.string())),
    ("spec_version", pa.string()),
    ("validated_at", pa.string()),
]

VALIDATED_EXAMPLES = pa.schema([*PROVENANCE, *JUDGED])

REJECTED_EXAMPLES = pa.schema(
    [
        *PROVENANCE,
        *JUDGED,
        ("fail_stage", pa.string()),
        ("fail_reasons", pa.list_(pa.string())),
    ]
)

EMBEDDING_DIM = 384
EXAMPLE_EMBEDDINGS = pa.schema(
    [
        ("example_id", pa.string()),
        ("cell_id", pa.string()),
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ("embedding_model", pa.string()),
    ]
)


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly ``schema`` (missing keys become nulls; extras are an error)."""
    names = set(schema.names)
    for r in rows[:1]:
        extra = set(r) - names
        if extra:
            raise ValueError(f"rows carry columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


DOMAIN_SPECS = pa.schema(
    [
        ("name", pa.string()),
        ("version", pa.string()),
        ("type", pa.string()),
        ("description", pa.string()),
        ("training_format", pa.string()),
        ("target_count", pa.int64()),
        ("consensus_threshold", pa.float64()),
        ("min_pass_rate", pa.float64()),
        ("diversity_threshold", pa.float64()),
        ("program_inputs", pa.list_(pa.string())),
        ("program_outputs", pa.list_(pa.string())),
        ("file_sha256", pa.string()),
    ]
)

DOMAIN_DIVERSITY = pa.schema(
    [
        ("n", pa.int64()),
        ("mean_pairwise_cosine_distance", pa.float64()),
        ("distinct_1", pa.float64()),
        ("distinct_2", pa.float64()),
        ("clusters", pa.int64()),
        ("diversity_threshold", pa.float64()),
    ]
)


def spec_table(spec: Any, file_hash: str) -> pa.Table:
    """One row describing a domain's spec, for warehouse consumers (the dbt marts join on it)."""
    # A statistical domain (timeseries, events) has no fields and no program.
    program = None if spec.statistical else spec.program_or_default()
    return to_table(
        [
            {
                "name": spec.name,
                "version": spec.version_str,
                "type": spec.type,
                "description": spec.description.strip(),
                "training_format": spec.training_format,
                "target_count": spec.target_count,
                "consensus_threshold": spec.validation.threshold,
                "min_pass_rate": spec.validation.min_pass_rate,
                "diversity_threshold": spec.validation.min_diversity,
                "program_inputs": program.inputs if program else [],
                "program_outputs": program.outputs if program else [],
                "file_sha256": file_hash,
            }
        ],
        DOMAIN_SPECS,
    )
