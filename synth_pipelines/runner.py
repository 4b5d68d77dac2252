"""Run the whole graph for one domain outside the UI (``make demo``) and summarize what it produced."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import dagster as dg

from synth_pipelines.assets import PIPELINE_ASSETS, PIPELINE_STEPS
from synth_pipelines.assets.spec_file import observe_spec
from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
from synth_pipelines.resources.settings import default_resources
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.warehouse.storage import PROGRAM_FILE, StoragePath, Warehouse

# The assets that write Parquet under the warehouse root (what the summary points at when written).
PARQUET_ASSETS = (
    "seed_problems",
    "corpus_chunks",
    "problem_matrix",
    "raw_generations",
    "validated_examples",
    "example_embeddings",
    "statistical_data",
)


def run_config_for(
    target_count: int | None,
    seed_count: int | None = None,
    log_level: str = "INFO",
    op_config: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ops: dict[str, Any] = {name: {"config": cfg} for name, cfg in (op_config or {}).items()}
    if target_count is not None:
        ops["problem_matrix"] = {"config": {"target_count": target_count}}
    if seed_count is not None:
        ops["seed_problems"] = {"config": {"count": seed_count}}
    return {"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}}


def assets_for(domain: str, resources: dict[str, Any]) -> list[Any]:
    """The assets and checks that make ``domain``: the statistical graph for a timeseries or events
    spec, the whole example graph otherwise (also when the spec cannot be read: domain_schema then
    fails with the reason)."""
    from synth_pipelines.assets.checks import QUALITY_CHECKS
    from synth_pipelines.assets.statistical_data import STATISTICAL_ASSETS, STATISTICAL_CHECKS
    from synth_pipelines.spec.loading import load_spec, spec_path_for
    from synth_pipelines.spec.model import SpecError

    schemas = getattr(resources.get("warehouse"), "schemas_dir", None) or "schemas"
    try:
        statistical = load_spec(spec_path_for(schemas, domain)).spec.statistical
    except (SpecError, FileNotFoundError, OSError):
        statistical = False
    if statistical:
        return [*STATISTICAL_ASSETS, *STATISTICAL_CHECKS]
    return [*PIPELINE_ASSETS, *QUALITY_CHECKS]


def materialize_domain(
    domain: str,
    *,
    instance: dg.DagsterInstance,
    target_count: int | None = None,
    resources: dict[str, Any] | None = None,
    raise_on_error: bool = False,
    op_config: dict[str, dict[str, Any]] | None = None,
    skip: Collection[str] = (),
) -> dg.ExecuteInJobResult:
    """Add the partition if needed and materialize every pipeline asset for it in-process.

    ``op_config`` maps an asset name to its run config,
    e.g. ``{"validated_examples": {"early_stop": False}}``. ``skip`` names assets left out (with
    their checks), e.g. ``{"compiled_program"}``.
    """
    validate_domain_name(domain)
    if not instance.has_dynamic_partition(DOMAIN_PARTITIONS_NAME, domain):
        instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [domain])
    resources = resources or default_resources()
    # The run's assets record the spec version they are made from (staleness in the UI).
    warehouse: Any = resources.get("warehouse")
    schemas = getattr(warehouse, "schemas_dir", None) or "schemas"
    observe_spec(instance, schemas, domain, warehouse.get() if hasattr(warehouse, "get") else None)
    selected = [a for a in assets_for(domain, resources) if not _targets(a) & set(skip)]
    run_config = run_config_for(target_count, op_config=op_config)
    # A statistical domain has no matrix: its size is in its spec, so target_count does not apply.
    names = {key.path[-1] for a in selected if isinstance(a, dg.AssetsDefinition) for key in a.keys}
    run_config["ops"] = {op: cfg for op, cfg in run_config["ops"].items() if op in names}
    return dg.materialize(
        selected,
        partition_key=domain,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def _targets(definition: Any) -> set[str]:
    """The asset names an asset definition makes or an asset check checks."""
    if isinstance(definition, dg.AssetsDefinition) and not definition.check_keys:
        return {key.path[-1] for key in definition.keys}
    return {key.asset_key.path[-1] for key in getattr(definition, "check_keys", [])} | {
        key.path[-1] for key in getattr(definition, "keys", [])
    }


def failure_messages(result: dg.ExecuteInJobResult) -> list[str]:
    """Each failed step's message: the asset's own description (what a user needs), else its error.
    A step stopped by a failed blocking check is told by the checks that failed, each with its value,
    threshold, where the threshold came from and what to try (Dagster's own message is cut short)."""
    failed_checks = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and not e.asset_check_evaluation_data.passed
        and e.asset_check_evaluation_data.severity == dg.AssetCheckSeverity.ERROR
    ]
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if (
                data.error is not None
                and data.error.cls_name == "DagsterAssetCheckFailedError"
                and failed_checks
            ):
                messages += [check_failure_line(c.check_name, c.metadata) for c in failed_checks]
                failed_checks = []  # told once, however many steps they stopped
                continue
            described = data.user_failure_data.description if data.user_failure_data else None
            messages.append(
                described or (data.error.message if data.error else "") or f"{event.step_key} failed"
            )
    return messages


def check_failure_line(name: str, metadata: dict[str, Any]) -> str:
    """``embedding_diversity 0.279 < 0.300 (auto: calibrated for profile 'local'): raise ...``."""
    measured = _meta_value(metadata.get("measured"))
    threshold = _meta_value(metadata.get("threshold"))
    comparison = _meta_value(metadata.get("comparison")) or ">="
    failed_as = {">=": "<", "<=": ">"}.get(str(comparison), "vs")
    source = _meta_value(metadata.get("threshold_source")) or "required"
    hint = _meta_value(metadata.get("hint"))
    not_measured = _meta_value(metadata.get("not_measured"))
    if not_measured:
        return f"{name} failed, not measured: {not_measured}" + (f": {hint}" if hint else "")
    values = (
        f"{measured:.3f} {failed_as} {threshold:.3f}"
        if isinstance(measured, int | float) and isinstance(threshold, int | float)
        else "failed"
    )
    return f"{name} {values} ({source})" + (f": {hint}" if hint else "")


def _meta_value(v: Any) -> Any:
    return getattr(v, "value", v)


def materialization_metadata(result: dg.ExecuteInJobResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        out[mat.asset_key.to_user_string()] = {k: _meta_value(v) for k, v in mat.metadata.items()}
    return out


def step_spans(instance: dg.DagsterInstance, result: dg.ExecuteInJobResult) -> dict[str, tuple[float, float]]:
    """(start, end) epoch seconds per asset or check as the instance recorded them. A graph-backed
    asset's steps (``raw_generations.generate_shard[shard_0]``, ...) count as that asset, from its
    first step's start to its last step's end (shards may run at once)."""
    spans: dict[str, tuple[float, float]] = {}
    for stat in instance.get_run_step_stats(result.run_id):
        if stat.start_time is None or stat.end_time is None:
            continue
        key = stat.step_key.split(".", 1)[0]  # an op inside a graph asset: "<asset>.<op>[...]"
        start, end = spans.get(key, (stat.start_time, stat.end_time))
        spans[key] = (min(start, stat.start_time), max(end, stat.end_time))
    return spans


def step_seconds(instance: dg.DagsterInstance, result: dg.ExecuteInJobResult) -> dict[str, float]:
    """Wall seconds per asset or check (see :func:`step_spans`)."""
    return {key: round(end - start, 3) for key, (start, end) in step_spans(instance, result).items()}


def run_report(
    domain: str, instance: dg.DagsterInstance, result: dg.ExecuteInJobResult, elapsed_s: float
) -> dict[str, Any]:
    """What ``synth generate --report`` writes: per asset its seconds, rows, model calls, tokens, cost."""
    meta = materialization_metadata(result)
    spans = step_spans(instance, result)
    seconds = {key: round(end - start, 3) for key, (start, end) in spans.items()}
    assets: dict[str, dict[str, Any]] = {}
    for name in PIPELINE_STEPS:
        m = meta.get(name, {})
        assets[name] = {
            "materialized": name in meta,
            "seconds": seconds.get(name),
            # Epoch seconds, for lining the asset up with what was sampled meanwhile (bench-scale's RSS).
            "span": list(spans[name]) if name in spans else None,
            "rows": m.get("rows"),
            "model_calls": int(m.get("model_calls") or 0),
            "cache_hits": int(m.get("cache_hits") or 0),
            "total_tokens": int(m.get("total_tokens") or 0),
            "cost_usd": float(m.get("cost_usd") or 0.0),
        }
    return {
        "domain": domain,
        "success": result.success,
        "wall_s": round(elapsed_s, 3),
        "assets": assets,
        "checks_seconds": {k: v for k, v in seconds.items() if k not in assets},
    }


def summarize(domain: str, result: dg.ExecuteInJobResult, warehouse: Warehouse, elapsed_s: float) -> str:
    meta = materialization_metadata(result)
    lines = [
        f"\n=== synth-pipelines: {domain} "
        f"({'succeeded' if result.success else 'FAILED'} in {elapsed_s:.0f}s) ==="
    ]
    model_calls = cache_hits = 0
    steps = PIPELINE_STEPS if "statistical_data" not in meta else ["domain_schema", "statistical_data"]
    for name in steps:
        m = meta.get(name)
        if m is None:
            lines.append(f"  {name:<20} not materialized")
            continue
        model_calls += int(m.get("model_calls", 0) or 0)
        cache_hits += int(m.get("cache_hits", 0) or 0)
        detail = {
            "domain_schema": lambda m: f"spec v{m.get('version')} ({m.get('fields')} fields)",
            "seed_problems": lambda m: f"{m.get('rows')} seeds ({m.get('source')})",
            "problem_matrix": lambda m: (
                f"{m.get('cells')} cells, total target {m.get('total_target')}"
                + (
                    f" by technique {m.get('target_by_technique')}"
                    if m.get("derived_problems") is not None
                    else ""
                )
            ),
            "corpus_chunks": lambda m: (
                f"{m.get('chunks')} chunks from {m.get('files')} file(s), {m.get('sampled')} sampled "
                f"({m.get('strategy')})"
                if m.get("chunks")
                else "no corpus (spec has no seed_source)"
            ),
            "raw_generations": lambda m: f"{m.get('rows')} rows ({m.get('ok')} ok, {m.get('failed')} failed)",
            "validated_examples": lambda m: (
                f"{m.get('rows')} accepted of {m.get('input_rows')} "
                f"(pass rate {float(m.get('overall_pass_rate') or 0):.0%}, "
                + (
                    f"mean consensus {float(m.get('mean_consensus') or 0):.2f})"
                    if str(m.get("panel") or "on") == "on"
                    else "judges skipped: the profile's calibration found the panel uninformative)"
                )
            ),
            "example_embeddings": lambda m: (
                f"{m.get('rows')} vectors, diversity (mean pairwise cosine distance) "
                f"{float(m.get('mean_pairwise_cosine_distance') or 0):.3f}"
            ),
            "compiled_program": lambda m: (
                f"held-out {m.get('metric')} score {float(m.get('score') or 0):.3f} "
                f"(train {m.get('n_train')}, scored {m.get('n_eval')} of {m.get('n_heldout')} held out)"
            ),
            "statistical_data": lambda m: (
                f"{m.get('rows')} rows ({m.get('type')}): {m.get('scenario_name')}; "
                f"quality {'ok' if (m.get('quality') or {}).get('passed') else 'FAILED'}"
            ),
            "example_index": lambda m: (
                f"{m.get('method')} search over {m.get('rows')} examples"
                + (f", recall@10 {float(m.get('recall_at_10') or 0):.3f}" if m.get("method") == "ann" else "")
            ),
        }[name](m)
        lines.append(f"  {name:<20} {detail}")
    checks = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    if checks:
        lines.append(
            "  checks:   "
            + ", ".join(
                f"{c.check_name} {'ok' if c.passed else ('WARN' if c.severity.value == 'WARN' else 'FAILED')}"
                + (
                    " (not measured)"
                    if "not_measured" in c.metadata
                    else f" ({_meta_value(c.metadata['measured']):.3g})"
                    if "measured" in c.metadata
                    else ""
                )
                for c in checks
            )
        )
    lines.append(
        f"  model calls: {model_calls}, cache hits: {cache_hits}"
        + ("  (nothing changed: zero model calls)" if model_calls == 0 and cache_hits else "")
    )
    rel, state = _display(warehouse.root), _display(warehouse.state_dir)
    written = [name for name in PARQUET_ASSETS if name in meta]
    query = (
        "select domain, example_id, consensus, example_json from read_parquet("
        f"'{rel}/validated_examples/*/*.parquet', hive_partitioning=true) limit 5"
        if "statistical_data" not in meta
        else f"select * from read_parquet('{rel}/statistical_data/domain={domain}/*.parquet') limit 5"
    )
    if not written:
        return "\n".join(lines)  # nothing was written this run: no paths to point at
    lines += [
        f"  parquet:  {rel}/<asset>/domain={domain}/part-0.parquet for {', '.join(written)}",
        f"  duckdb:   {state}/synth.duckdb (one table per asset + agent_performance)",
    ]
    if "compiled_program" in meta:
        lines.append(f"  program:  {rel}/{PROGRAM_FILE.format(domain=domain)}")
    if "validated_examples" not in meta and "statistical_data" not in meta:
        return "\n".join(lines)
    if warehouse.is_remote:
        # DuckDB's own httpfs extension is a download; the fsspec filesystem we already use is not.
        protocol = str(warehouse.root).split("://", 1)[0]
        lines.append(
            f'  (python): .venv/bin/python -c "import duckdb, fsspec; '
            f"duckdb.register_filesystem(fsspec.filesystem('{protocol}')); "
            f'duckdb.sql(\\"{query}\\").show()"'
        )
    else:
        lines += [
            f'  query:    duckdb -c "{query}"',
            f'  (python): .venv/bin/python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"',
        ]
    return "\n".join(lines)


def _display(path: StoragePath) -> str:
    """A local path relative to the working folder when inside it; a URL as is."""
    if isinstance(path, Path):
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def sync_partitions(instance: dg.DagsterInstance, schemas_dir: str | Path) -> list[str]:
    """Add a ``domain`` partition for every valid spec (what the sensor does, on demand), and
    register the model pool's limit so the first backfill already queues for it.

    Returns the added keys.
    """
    from synth_pipelines.resources.pools import ensure_pool_limit
    from synth_pipelines.sensors.domain_spec import plan_spec_runs

    ensure_pool_limit(instance)

    existing = set(instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME))
    plan = plan_spec_runs(schemas_dir, existing, {})
    for path, reason in plan.skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if plan.new_partitions:
        instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, plan.new_partitions)
    return plan.new_partitions


class DagsterHomeError(RuntimeError):
    """DAGSTER_HOME names no directory: Dagster would refuse it with a traceback."""


def current_instance() -> dg.DagsterInstance:
    """The instance at ``$DAGSTER_HOME`` (so the UI shows the run), or a throwaway one without it.
    A DAGSTER_HOME that is not a directory is a clear error, not created: a typo would otherwise
    start a fresh instance the UI never reads."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    if not Path(home).is_dir():
        raise DagsterHomeError(
            f"DAGSTER_HOME={home} is not a directory: create it (mkdir -p {home}) or unset "
            "DAGSTER_HOME to run on a throwaway instance"
        )
    return dg.DagsterInstance.get()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialize the whole synth graph for one domain.")
    parser.add_argument("--domain", default="api_development")
    parser.add_argument("--target-count", type=int, default=None)
    parser.add_argument(
        "--sync-partitions",
        action="store_true",
        help="only add a partition for every valid spec in the schemas folder, then exit",
    )
    args = parser.parse_args(argv)
    if args.sync_partitions and not os.environ.get("DAGSTER_HOME"):
        print("error: --sync-partitions adds partitions to DAGSTER_HOME's instance: set it", file=sys.stderr)
        return 2
    try:
        instance = current_instance()
    except DagsterHomeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.sync_partitions:
        resources = default_resources()
        added = sync_partitions(instance, resources["warehouse"].schemas_dir)
        print(
            f"domain partitions: {sorted(instance.get_dynamic_partitions(DOMAIN_PARTITIONS_NAME))} "
            f"(added {added or 'none'})"
        )
        return 0
    try:
        validate_domain_name(args.domain)
    except UnsafeDomainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    resources = default_resources()
    warehouse = resources["warehouse"].get()
    started = time.perf_counter()
    result = materialize_domain(
        args.domain, instance=instance, target_count=args.target_count, resources=resources
    )
    print(summarize(args.domain, result, warehouse, time.perf_counter() - started))
    if not result.success:
        for message in failure_messages(result):
            print(f"\nerror: {message.strip()}", file=sys.stderr)
        return 1
    print(json.dumps({"domain": args.domain, "ok": True}))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: everything is written and closed by now, and duckdb's nanobind
    # bindings otherwise print pages of harmless "leaked instance" warnings at exit.
    os._exit(code)
