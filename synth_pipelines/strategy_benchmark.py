"""``synth benchmark``: generation strategies side by side on quality and cost, for one domain.

A strategy is a named bundle of provider roles and validation settings (:class:`Strategy`). Each runs
the domain's whole graph at ``count`` items into its own scratch warehouse (a copy of the specs
folder with the strategy's validation settings, a copy of the profile with its roles) while every
strategy shares one response cache, so identical requests are paid once. The report has, per
strategy, what it produced (pass rate, mean consensus, diversity, near-duplicate rate, judge kappa
on the domain's labelled set when there is one, the program score when it compiles one) and what it
cost: model calls, cache hits, tokens, dollars billed, the dollars it would cost with a cold cache,
wall time and accepted rows per second.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import BaseModel, Field

from synth_pipelines.llm.config import ProviderProfile, load_profile, profile_path
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import failure_messages, materialization_metadata, materialize_domain
from synth_pipelines.spec.loading import spec_path_for
from synth_pipelines.warehouse.storage import Warehouse


class Strategy(BaseModel):
    """A named bundle: which models generate and judge, and validation settings to override."""

    description: str = ""
    # "first": the profile's first generator / validator only; "all": the profile's roles as they
    # are; or an explicit list of model names of the profile.
    generator: str | list[str] = "all"
    validators: str | list[str] = "all"
    validation: dict[str, Any] = Field(default_factory=dict, description="spec validation overrides")
    program: bool = Field(default=False, description="also compile and score the DSPy program")


BUILTIN_STRATEGIES: dict[str, Strategy] = {
    "single-model": Strategy(
        description="the first generator, judged by the first validator alone",
        generator="first",
        validators="first",
    ),
    "multi-model": Strategy(description="the profile's generator chain and its whole validator panel"),
    "dspy-multi-model": Strategy(
        description="the whole panel, plus the DSPy program compiled and scored on what it accepted",
        program=True,
    ),
}


class BenchmarkError(ValueError):
    """A strategy or option that cannot be run as given."""


# A strategy's name becomes a folder under the workdir: a word, never a path.
STRATEGY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# Written into every scratch folder the benchmark makes; a folder is emptied only when it holds one.
MARKER = ".synth-benchmark"


def check_strategy_name(name: str) -> str:
    if not isinstance(name, str) or not STRATEGY_NAME.fullmatch(name) or name == "cache":
        raise BenchmarkError(
            f"strategy name {name!r} is not allowed: use lower-case letters, digits, '_' or '-' "
            "(it names a folder under the workdir; 'cache' is the shared cache's)"
        )
    return name


def refuse_unmarked(folder: Path) -> None:
    """A BenchmarkError unless ``folder`` holds the marker a benchmark wrote into it."""
    if not (folder / MARKER).is_file():
        raise BenchmarkError(
            f"{folder} exists but was not made by synth benchmark (no {MARKER} marker): refusing to "
            "delete it; remove it yourself or pick another --workdir"
        )


def scratch_folder(workdir: Path, name: str) -> Path:
    """``workdir/<name>``, empty and marked as the benchmark's own. An existing folder is emptied only
    when it holds the marker a benchmark wrote; anything else there is refused, never deleted."""
    folder = workdir / check_strategy_name(name)
    if folder.resolve().parent != workdir.resolve():
        raise BenchmarkError(f"strategy folder {folder} is not directly inside the workdir {workdir}")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BenchmarkError(
            f"{folder} exists and is not a folder the benchmark made; remove it or pick --workdir"
        )
    if folder.exists():
        refuse_unmarked(folder)
        shutil.rmtree(folder)  # a scratch warehouse of an earlier benchmark: every run starts it empty
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by synth benchmark; emptied by the next run of the same strategy\n")
    return folder


class StrategyResult(BaseModel):
    strategy: str
    description: str
    success: bool
    error: str | None = None
    generator: list[str]
    validators: list[str]
    raw_rows: int = 0
    accepted: int = 0
    pass_rate: float = 0.0
    mean_consensus: float | None = None
    diversity: float | None = None
    near_duplicate_rate: float = 0.0
    judge_kappa: float | None = None
    program_score: float | None = None
    model_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cold_cost_usd: float = 0.0
    wall_s: float = 0.0
    rows_per_s: float = 0.0
    warehouse: str = ""


class BenchmarkReport(BaseModel):
    domain: str
    count: int
    profile: str
    cache: str
    strategies: list[StrategyResult]


def load_strategies(names: list[str], file: Path | None) -> dict[str, Strategy]:
    """The named strategies: built-in ones, or ones defined in a YAML file (name -> Strategy)."""
    known = dict(BUILTIN_STRATEGIES)
    if file is not None:
        try:
            data = yaml.safe_load(file.read_text()) or {}
            known.update({name: Strategy.model_validate(body) for name, body in data.items()})
        except (OSError, yaml.YAMLError, AttributeError, ValueError) as e:
            raise BenchmarkError(f"strategies file {file}: {e}") from None
    for name in [*names, *known]:
        check_strategy_name(name)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchmarkError(f"unknown strategies {unknown}; known: {sorted(known)}")
    if not names:
        raise BenchmarkError("name at least one strategy")
    return {n: known[n] for n in names}


def _pick(choice: str | list[str], declared: list[str], role: str, profile: ProviderProfile) -> list[str]:
    if choice == "all":
        return declared
    if choice == "first":
        return declared[:1]
    names = [choice] if isinstance(choice, str) else choice
    unknown = [n for n in names if n not in profile.models]
    if unknown:
        raise BenchmarkError(
            f"{role} names models {unknown} the profile does not define: {sorted(profile.models)}"
        )
    return names


def strategy_profile(profile: ProviderProfile, source: Path, strategy: Strategy) -> dict[str, Any]:
    """The profile YAML (as data) with the strategy's roles; everything else as the user wrote it."""
    data = yaml.safe_load(source.read_text())
    weights = {v.model: v.weight for v in profile.roles.validators}
    generator = _pick(strategy.generator, list(profile.roles.generator), "generator", profile)
    validators = _pick(strategy.validators, list(weights), "validators", profile)
    data.setdefault("roles", {})
    data["roles"]["generator"] = generator
    data["roles"]["validators"] = [{"model": m, "weight": weights.get(m, 1.0)} for m in validators]
    return data


def _scratch_specs(schemas: Path, domain: str, target: Path, strategy: Strategy) -> Path:
    """A copy of the specs folder with the strategy's validation overrides in the domain's spec."""
    shutil.copytree(schemas, target, dirs_exist_ok=True)
    if strategy.validation:
        path = spec_path_for(target, domain)
        data = yaml.safe_load(path.read_text())
        data.setdefault("validation", {}).update(strategy.validation)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _spend(wh: Warehouse, domain: str, run_id: str) -> dict[str, Any]:
    table = wh.read_dataset("llm_usage", domain=domain)
    rows = [r for r in (table.to_pylist() if table is not None else []) if r["run_id"] == run_id]
    return {
        k: sum(r[k] for r in rows)
        for k in ("model_calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd")
    }


def _cold_cost(profile: ProviderProfile, per_model: dict[str, dict[str, float]]) -> float:
    """What the run's calls would cost with nothing cached (tokens of cache hits included)."""
    return sum(
        profile.models[m].cost(int(s.get("prompt_tokens", 0)), int(s.get("completion_tokens", 0)))
        for m, s in per_model.items()
        if m in profile.models
    )


def judge_kappa(
    domain: str, schemas: Path, labelled: Path, llm: LLMResource, cache_path: Path, embedder: EmbedderResource
) -> tuple[float, dict[str, Any]]:
    """The strategy's panel, at its spec's thresholds, on the labelled set: Cohen's kappa."""
    from synth_pipelines.validation.calibration import (
        agreement,
        gate_accepts,
        load_labelled,
        resolved_spec,
        score_rows,
    )
    from synth_pipelines.validation.consensus import resolve_judges

    client = llm.client(cache_path)
    spec = resolved_spec(spec_path_for(schemas, domain), client.profile).spec
    rows = load_labelled(labelled)
    scores = score_rows(
        spec,
        rows,
        client,
        resolve_judges(spec, client),
        lambda a, b: embedder.similarity(a, b, cache_path=cache_path.parent / "embeddings.sqlite"),
    )
    accepted = gate_accepts(scores, spec.validation.threshold, spec.validation.min_on_topic)
    result = agreement(accepted, [s.good for s in scores], spec.validation.threshold)
    totals = client.totals
    return result.kappa, {
        "model_calls": totals.model_calls,
        "cache_hits": totals.cache_hits,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "cost_usd": totals.cost_usd,
        "per_model": totals.per_model,
    }


def run_strategy(
    name: str,
    strategy: Strategy,
    *,
    domain: str,
    count: int,
    schemas: Path,
    profile_source: Path,
    workdir: Path,
    cache_file: Path,
    labelled: Path | None,
    embedder: EmbedderResource,
) -> StrategyResult:
    """Run one strategy into ``workdir/<name>`` and measure it."""
    base = load_profile(str(profile_source))
    folder = scratch_folder(workdir, name)
    profile_file = folder / "profile.yaml"
    profile_data = strategy_profile(base, profile_source, strategy)
    profile_data["name"] = f"{base.name}+{name}"
    profile_file.write_text(yaml.safe_dump(profile_data, sort_keys=False))
    profile = load_profile(str(profile_file))
    specs = _scratch_specs(schemas, domain, folder / "schemas", strategy)
    llm = LLMResource(profile=str(profile_file), cache_file=str(cache_file))
    wh_resource = WarehouseResource(root=str(folder / "warehouse"), schemas_dir=str(specs))
    started = time.perf_counter()
    result = materialize_domain(
        domain,
        instance=dg.DagsterInstance.ephemeral(),
        target_count=count,
        resources={"warehouse": wh_resource, "llm": llm, "embedder": embedder},
        skip=() if strategy.program else ("compiled_program",),
    )
    wall = time.perf_counter() - started
    wh = wh_resource.get()
    meta = materialization_metadata(result)
    spend = _spend(wh, domain, result.run_id)
    per_model: dict[str, dict[str, float]] = {}
    for asset_meta in meta.values():
        for model, stats in (asset_meta.get("usage_per_model") or {}).items():
            merged = per_model.setdefault(model, {})
            for k in ("prompt_tokens", "completion_tokens"):
                merged[k] = merged.get(k, 0) + stats.get(k, 0)
    kappa = None
    if labelled is not None and labelled.is_file():
        kappa, judged = judge_kappa(domain, specs, labelled, llm, cache_file, embedder)
        for k in ("model_calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd"):
            spend[k] += judged[k]
        for m, s in judged["per_model"].items():
            merged = per_model.setdefault(m, {})
            for k in ("prompt_tokens", "completion_tokens"):
                merged[k] = merged.get(k, 0) + s.get(k, 0)
    validated = meta.get("validated_examples", {})
    raw_rows = int(meta.get("raw_generations", {}).get("rows") or 0)
    accepted = int(validated.get("rows") or 0)
    candidates = int(validated.get("input_rows") or 0)
    error = None if result.success else ("; ".join(failure_messages(result)) or "the run failed")
    return StrategyResult(
        strategy=name,
        description=strategy.description,
        success=result.success,
        error=error,
        generator=list(profile.roles.generator),
        validators=[v.model for v in profile.roles.validators],
        raw_rows=raw_rows,
        accepted=accepted,
        pass_rate=round(accepted / raw_rows, 4) if raw_rows else 0.0,
        mean_consensus=validated.get("mean_consensus"),
        diversity=meta.get("example_embeddings", {}).get("mean_pairwise_cosine_distance"),
        near_duplicate_rate=round(int(validated.get("near_duplicates_removed") or 0) / candidates, 4)
        if candidates
        else 0.0,
        judge_kappa=kappa,
        program_score=meta.get("compiled_program", {}).get("score"),
        model_calls=int(spend["model_calls"]),
        cache_hits=int(spend["cache_hits"]),
        prompt_tokens=int(spend["prompt_tokens"]),
        completion_tokens=int(spend["completion_tokens"]),
        cost_usd=round(float(spend["cost_usd"]), 6),
        cold_cost_usd=round(_cold_cost(profile, per_model), 6),
        wall_s=round(wall, 2),
        rows_per_s=round(accepted / wall, 3) if wall > 0 else 0.0,
        warehouse=str(wh.root),
    )


def check_strategies(
    domain: str, strategies: dict[str, Strategy], *, schemas: Path, profile_source: Path, workdir: Path
) -> None:
    """Every strategy's models, validation overrides and scratch folder, checked before the first one
    runs, so a typo in the third does not waste the first two's spend."""
    from synth_pipelines.spec.loading import parse_spec
    from synth_pipelines.spec.model import SpecError

    base = load_profile(str(profile_source))
    try:
        spec_data = yaml.safe_load(spec_path_for(schemas, domain).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f"spec of {domain!r}: {e}") from None
    for name, strategy in strategies.items():
        check_strategy_name(name)
        try:
            strategy_profile(base, profile_source, strategy)
        except BenchmarkError as e:
            raise BenchmarkError(f"strategy {name!r}: {e}") from None
        if strategy.validation:
            data = dict(spec_data)
            data["validation"] = {**(data.get("validation") or {}), **strategy.validation}
            try:
                parse_spec(data, path=f"strategy {name!r} validation overrides")
            except SpecError as e:
                raise BenchmarkError(str(e).splitlines()[1].strip("- ") + f" (strategy {name!r})") from None
        if (workdir / name).exists():
            refuse_unmarked(workdir / name)


def run_benchmark(
    domain: str,
    strategies: dict[str, Strategy],
    *,
    count: int,
    schemas: Path,
    profile: str,
    workdir: Path,
    labelled: Path | None = None,
) -> BenchmarkReport:
    """Every strategy in turn, one shared cache: ``workdir/cache/responses.sqlite``, laid out as a
    warehouse's state folder, so ``synth doctor --warehouse WORKDIR`` checks the endpoints for it."""
    source = profile_path(profile)
    check_strategies(domain, strategies, schemas=schemas, profile_source=source, workdir=workdir)
    cache_file = workdir / "cache" / "responses.sqlite"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    embedder = EmbedderResource()
    results = [
        run_strategy(
            name,
            strategy,
            domain=domain,
            count=count,
            schemas=schemas,
            profile_source=source,
            workdir=workdir,
            cache_file=cache_file,
            labelled=labelled,
            embedder=embedder,
        )
        for name, strategy in strategies.items()
    ]
    return BenchmarkReport(
        domain=domain,
        count=count,
        profile=load_profile(profile).name,
        cache=str(cache_file),
        strategies=results,
    )


COLUMNS = [
    ("pass_rate", "{:.1%}"),
    ("mean_consensus", "{:.3f}"),
    ("diversity", "{:.3f}"),
    ("near_duplicate_rate", "{:.1%}"),
    ("judge_kappa", "{:.3f}"),
    ("program_score", "{:.3f}"),
    ("accepted", "{}"),
    ("model_calls", "{}"),
    ("cache_hits", "{}"),
    ("prompt_tokens", "{}"),
    ("completion_tokens", "{}"),
    ("cost_usd", "{:.4f}"),
    ("cold_cost_usd", "{:.4f}"),
    ("wall_s", "{:.1f}"),
    ("rows_per_s", "{:.2f}"),
]


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def render_report(report: BenchmarkReport, baseline: BenchmarkReport | None = None) -> str:
    """Strategies side by side (one column each); with a baseline, each value's change against the
    baseline's strategy of the same name."""
    names = [r.strategy for r in report.strategies]
    width = max(14, *(len(n) + 2 for n in names))
    before = {r.strategy: r for r in baseline.strategies} if baseline else {}
    lines = [
        f"benchmark of {report.domain}: {report.count} items per strategy, profile {report.profile}",
        f"{'':<20}" + "".join(f"{n:>{width}}" for n in names),
    ]
    for field, pattern in COLUMNS:
        cells = []
        for r in report.strategies:
            value = getattr(r, field)
            cell = _fmt(value, pattern)
            old = getattr(before[r.strategy], field) if r.strategy in before else None
            if isinstance(value, int | float) and isinstance(old, int | float):
                cell += f" ({value - old:+.3g})"
            cells.append(cell)
        lines.append(f"{field:<20}" + "".join(f"{c:>{width}}" for c in cells))
    for r in report.strategies:
        if not r.success:
            lines.append(f"{r.strategy} FAILED: {r.error}")
    return "\n".join(lines)


def load_report(path: Path) -> BenchmarkReport:
    try:
        return BenchmarkReport.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"baseline report {path}: {e}") from None
