"""The first three assets: the validated spec, its seed problems and the problem matrix."""

import json
import time
from typing import Any

import dagster as dg
from pydantic import Field

from synth_pipelines.assets._common import (
    load_materialized_spec,
    markdown_table,
    provider_failure,
    record_spend,
    require_upstream,
)
from synth_pipelines.generation.corpus import CorpusError, chunks_table, load_chunks, sample_chunks
from synth_pipelines.generation.matrix import asked_conditions, build_matrix, feedback_extras
from synth_pipelines.generation.seeds import (
    build_seed_problems,
    classify_seeds,
    grounded_seed_problems,
    seeds_to_classify,
)
from synth_pipelines.generation.techniques import (
    attach_problems,
    derivations,
    derive_problems,
    plan_technique_rows,
    technique_counts,
)
from synth_pipelines.learning.feedback import feedback_targets, record_feedback_targets
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.config import ProfileError
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.spec.example_schema import example_json_schema
from synth_pipelines.spec.model import SpecError, load_spec, spec_digest, spec_path_for
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.validation.calibration import resolve_thresholds
from synth_pipelines.warehouse.storage import SPEC_FILE
from synth_pipelines.warehouse.tables import (
    CORPUS_CHUNKS,
    PROBLEM_MATRIX,
    SEED_PROBLEMS,
    spec_table,
    to_table,
)

GROUP = "synthesis"


@dg.asset(partitions_def=domain_partitions, group_name=GROUP, kinds={"yaml", "json"})
def domain_schema(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """The parsed and validated domain spec (grain: one spec per domain).

    Reads ``schemas/<domain>.yaml``, validates it (rules' SQL included) and compiles its fields to
    the example model and JSON schema. ``consensus_threshold: auto`` becomes the calibrated threshold
    of the provider profile's validator panel (the design's 0.75 for an uncalibrated panel), so
    every later asset reads a number. Its data version is the SHA-256 of the file plus that
    threshold, so editing the spec or switching to a panel calibrated differently marks everything
    downstream stale. An invalid spec fails here, naming the file and field, and nothing downstream
    runs.
    """
    domain = context.partition_key
    try:
        validate_domain_name(domain, source="the partition key")
        path = spec_path_for(warehouse.schemas_dir, domain)
        loaded = load_spec(path)
    except (UnsafeDomainError, FileNotFoundError, SpecError) as e:
        raise dg.Failure(description=str(e)) from e
    program = loaded.spec.program
    if program is not None and program.module is not None:
        try:
            module_file = program.module_file(warehouse.schemas_dir)
        except ValueError as e:
            raise dg.Failure(description=f"{path}: program.module: {e}") from e
        if not module_file.is_file():
            raise dg.Failure(
                description=f"{path}: program.module: {module_file} does not exist (the path is relative "
                "to the specs folder)"
            )
    try:
        profile = llm.load_profile()
    except ProfileError as e:
        raise dg.Failure(description=str(e)) from e
    spec, threshold_sources = resolve_thresholds(loaded.spec, profile)
    schema = example_json_schema(spec)
    wh = warehouse.get()
    out = wh.write_json(
        SPEC_FILE.format(domain=domain),
        {
            "file": str(path),
            "file_hash": loaded.file_hash,
            "spec_digest": spec_digest(spec),
            "threshold_sources": threshold_sources,
            "spec": spec.model_dump(mode="json"),
            "example_json_schema": schema,
        },
    )
    wh.replace_domain_rows("domain_specs", domain, spec_table(spec, loaded.file_hash))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            f"{loaded.file_hash}:{spec.validation.threshold:g}:{spec.validation.min_diversity:g}"
        ),
        metadata={
            "spec_file": dg.MetadataValue.path(str(path)),
            "file_sha256": loaded.file_hash,
            "stored_at": dg.MetadataValue.path(str(out)),
            "name": spec.name,
            "version": spec.version_str,
            "type": spec.type,
            "fields": len(spec.fields),
            "matrix_dimensions": dg.MetadataValue.json(spec.matrix.dimensions),
            "complexity": dg.MetadataValue.json(spec.matrix.complexity),
            "target_count": spec.target_count,
            "consensus_threshold": spec.validation.threshold,
            "diversity_threshold": spec.validation.min_diversity,
            "threshold_sources": dg.MetadataValue.json(threshold_sources),
            "rules": len(spec.rules),
            "training_format": spec.training_format,
            "example_json_schema": dg.MetadataValue.json(schema),
        },
    )


@dg.asset(
    partitions_def=domain_partitions, group_name=GROUP, deps=[domain_schema], kinds={"parquet", "duckdb"}
)
def corpus_chunks(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """The user's documents, chunked (grain: one row per chunk), when the spec has ``seed_source``.

    Tables (Parquet, CSV, JSONL) are read with DuckDB, one chunk per row; Markdown and text files
    are split into paragraphs of at most ``chunk_chars``. Each chunk has a stable id, its file and
    offsets, a timestamp and an entity count. The ``sample_size`` chunks picked by ``strategy``
    (diverse, recent, entity_rich, by_field; deterministic by ``seed``) are marked ``sampled``;
    ``seed_problems`` writes one grounded problem per sampled chunk. Without ``seed_source`` the
    partition is empty."""
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    source = spec.seed_source
    if source is None:
        path = wh.write_dataset("corpus_chunks", domain, CORPUS_CHUNKS.empty_table())
        return dg.MaterializeResult(metadata={"chunks": 0, "note": "the spec has no seed_source"})
    try:
        chunks = load_chunks(source)
        sampled = sample_chunks(
            chunks, source, lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path)
        )
    except CorpusError as e:
        raise dg.Failure(description=f"corpus_chunks for {domain!r}: {e}") from e
    path = wh.write_dataset("corpus_chunks", domain, chunks_table(chunks, sampled))
    sources: dict[str, int] = {}
    for c in sampled:
        sources[c.source] = sources.get(c.source, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "chunks": len(chunks),
            "files": len({c.source for c in chunks}),
            "sampled": len(sampled),
            "strategy": source.strategy,
            "sampled_by_source": dg.MetadataValue.json(sources),
            "path": dg.MetadataValue.path(str(path)),
            "preview": markdown_table(
                [c.model_dump() for c in sampled],
                ["chunk_id", "source", "start", "end", "text"],
                limit=5,
                width=100,
            ),
        }
    )


class SeedConfig(dg.Config):
    count: int = Field(default=5, ge=1, le=200, description="Seeds to generate when the spec lists none.")


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=GROUP,
    deps=[domain_schema, corpus_chunks],
    kinds={"parquet", "duckdb"},
)
def seed_problems(
    context: dg.AssetExecutionContext, config: SeedConfig, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """Seed problems of a domain (grain: one row per distinct problem statement).

    Taken from the spec's ``seed_problems`` when it lists any (an untagged one that names no
    dimension value is classified by one cached generator call: ``conditions_json`` lists the
    values it fits), otherwise generated by the generator model (``count``, default 5, asked per
    combination of the matrix dimensions; each seed records the conditions it was asked for). With
    ``seed_source``, the generator also writes one problem
    grounded in each sampled corpus chunk, and the seed keeps the chunk's id, file and offsets
    (which every example made from it inherits). Exact duplicates (after normalization) are dropped.
    """
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    grounded = spec.seed_source is not None
    listed, _ = build_seed_problems(spec, None) if spec.seed_problems else ([], [])
    to_classify = seeds_to_classify(spec, listed)
    client = llm.client(wh.cache_path) if grounded or not spec.seed_problems or to_classify else None
    try:
        if grounded and client is not None:
            chunks = require_upstream(wh, "corpus_chunks", domain)
            picked = sorted(
                (r for r in chunks.to_pylist() if r["sampled"]), key=lambda r: int(r["sample_rank"])
            )
            from_corpus, failures = grounded_seed_problems(spec, picked, client)
            seeds = [*listed, *from_corpus]
        else:
            seeds, failures = build_seed_problems(spec, client, count=config.count)
        if to_classify and client is not None:
            # Untagged listed seeds that name no dimension value: one cached call each says
            # which cells they fit (else they would serve every cell, contradictions included).
            seeds, classify_failures = classify_seeds(spec, seeds, client)
            failures += classify_failures
    except (ProviderError, ProviderConfigError) as e:
        raise provider_failure(f"generating seed problems for {domain!r}", e) from e
    if not seeds:
        raise dg.Failure(
            description=f"no usable seed problems for {domain!r}: {'; '.join(failures)[:1000]}. "
            "Add seed_problems to the spec or use a stronger generator."
        )
    rows = [s.model_dump() for s in seeds]
    table = to_table(rows, SEED_PROBLEMS)
    path = wh.write_dataset("seed_problems", domain, table)
    meta = {
        "rows": len(rows),
        "source": "corpus" if grounded else "spec" if spec.seed_problems else "generated",
        "failed_batches": len(failures),
        "classified_seeds": len(to_classify),
        "path": dg.MetadataValue.path(str(path)),
        "preview": markdown_table(rows, ["seed_id", "problem", "source"], limit=10, width=100),
    }
    if client is not None:
        meta.update(record_spend(context, wh, client.totals, units=client.totals.calls, started=started))
    return dg.MaterializeResult(metadata=meta)


class MatrixConfig(dg.Config):
    target_count: int | None = Field(default=None, ge=1, description="Override the spec's target_count.")
    weak_cells: list[str] = Field(
        default_factory=list,
        description="Cell ids the feedback loop reports weak: their extra examples are recorded for the "
        "domain and kept by every later run.",
    )
    weak_boost: float = Field(default=3.0, ge=1.0, description="Weight multiplier for weak cells.")


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=GROUP,
    deps=[seed_problems],
    kinds={"parquet", "duckdb"},
)
def problem_matrix(
    context: dg.AssetExecutionContext, config: MatrixConfig, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """The generation plan (grain: one row per matrix cell = dimension values x complexity level,
    plus one row per generation technique the cell uses).

    Each cell is tied to a seed problem and given a target count: the spec's complexity
    distribution over ``target_count``, plus the extra examples the feedback loop has recorded for
    the domain's weak cells (``feedback_targets``). Weak cells named in this run's config are
    recorded first, once per run, so their boost outlasts the run; no cell's target ever shrinks.
    With spec ``techniques``, cells also get variation, adversarial and scenario rows, each with a
    problem derived from the seed by the generator model (``technique``, ``problem`` and
    ``parent_problem`` columns); a weak cell's extras go to its adversarial and variation rows first.
    """
    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    seeds = require_upstream(wh, "seed_problems", domain).to_pylist()
    newly = feedback_extras(
        spec, config.weak_cells, target_count=config.target_count, weak_boost=config.weak_boost
    )
    recorded_now = record_feedback_targets(wh, domain, newly, source=context.run_id)
    extras = feedback_targets(wh, domain)
    base = build_matrix(
        spec,
        [(s["seed_id"], s["problem"]) for s in seeds],
        target_count=config.target_count,
        asked=asked_conditions(seeds),
    )
    cells = plan_technique_rows(spec, base, extras)
    technique_meta: dict[str, Any] = {}
    if spec.techniques.enabled:
        seed_text = {s["seed_id"]: s["problem"] for s in seeds}
        wanted = derivations(cells, seed_text)
        client = llm.client(wh.cache_path)
        try:
            problems, failures = derive_problems(spec, wanted, client)
        except (ProviderError, ProviderConfigError) as e:
            raise provider_failure(f"deriving technique problems for {domain!r}", e) from e
        cells = attach_problems(cells, problems, seed_text)
        technique_meta = {
            "derived_problems": len(problems),
            "derivation_failures": len(failures),
            "derivation_failure_examples": dg.MetadataValue.json(failures[:5]),
            **record_spend(context, wh, client.totals, units=len(wanted), started=started),
        }
    known = {c.cell_id for c in cells}
    rows = [
        {**c.model_dump(exclude={"conditions"}), "conditions_json": json.dumps(c.conditions, sort_keys=True)}
        for c in cells
    ]
    table = to_table(rows, PROBLEM_MATRIX)
    path = wh.write_dataset("problem_matrix", domain, table)
    active = [r for r in rows if r["target"] > 0]
    by_level: dict[str, int] = {}
    for c in cells:
        by_level[c.complexity] = by_level.get(c.complexity, 0) + c.target
    return dg.MaterializeResult(
        metadata={
            "cells": len(rows),
            "cells_with_target": len(active),
            "total_target": sum(r["target"] for r in rows),
            "weak_cells": len([c for c in cells if c.weak]),
            "feedback_extra_examples": sum(v for k, v in extras.items() if k in known),
            "feedback_recorded_this_run": dg.MetadataValue.json(newly if recorded_now else {}),
            # Cells that earlier feedback named but the spec no longer has (their extras do not apply).
            "feedback_for_unknown_cells": dg.MetadataValue.json(sorted(set(extras) - known)),
            "target_by_complexity": dg.MetadataValue.json(by_level),
            "target_by_technique": dg.MetadataValue.json(technique_counts(cells)),
            **technique_meta,
            "path": dg.MetadataValue.path(str(path)),
            "preview": markdown_table(
                active,
                ["cell_id", "technique", "complexity", "conditions_json", "seed_id", "target"],
                limit=10,
            ),
        }
    )
