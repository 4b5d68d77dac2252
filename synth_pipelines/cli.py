"""``synth``: a thin command line over the same code the assets and sensors use.

Errors are one short, actionable line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from synth_pipelines.learning.outcomes import record_outcomes
from synth_pipelines.spec.model import (
    TEMPLATES_DIR,
    SpecError,
    discover_specs,
    load_spec,
    parse_spec,
    spec_path_for,
)
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.warehouse.storage import (
    INDEX_FILE,
    PROGRAM_FILE,
    SPEC_FILE,
    TRAINED_FILE,
    TRAINED_SCORE_FILE,
    StorageError,
    StoragePath,
    Warehouse,
    location_from_env,
    read_rows_file,
    storage_location,
)

app = typer.Typer(
    help="synth-pipelines: LLM training data as Dagster assets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schema_app = typer.Typer(help="Domain spec templates and validation.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

WarehouseOpt = Annotated[
    str | None, typer.Option(help="Warehouse root (default $SYNTH_WAREHOUSE or ./warehouse).")
]
SchemasOpt = Annotated[str | None, typer.Option(help="Specs folder (default $SYNTH_SCHEMAS or ./schemas).")]
ProfileOpt = Annotated[
    str | None, typer.Option(help="Provider profile name or YAML path (default $SYNTH_PROFILE or local).")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


def _warehouse(root: str | None) -> Warehouse:
    """The warehouse from the option or the environment; a bad location is a one-line error."""
    resolved_root, state_dir = location_from_env(root)
    try:
        return Warehouse(resolved_root, state_dir=state_dir)
    except StorageError as e:
        raise _fail(str(e), 2) from None


def _schemas(schemas: str | None) -> str:
    return schemas or os.environ.get("SYNTH_SCHEMAS", "schemas")


def _profile(profile: str | None) -> str:
    return profile or os.environ.get("SYNTH_PROFILE", "local")


def _domain(domain: str) -> str:
    try:
        return validate_domain_name(domain)
    except UnsafeDomainError as e:
        raise _fail(str(e), 2) from None


# --------------------------------------------------------------------------------------------- generate


def _progress_poller(wh: Warehouse, domain: str, started: float, done: threading.Event) -> None:
    """Which assets of the domain have been written since ``started`` (files are the truth), and for
    the running one its own report: rows, rows/s, tokens, dollars so far and the ETA."""
    from rich.progress import BarColumn, Progress, TextColumn

    from synth_pipelines.assets import PIPELINE_STEPS
    from synth_pipelines.warehouse.progress import read_progress

    steps = PIPELINE_STEPS
    outputs = {
        "domain_schema": wh.file(SPEC_FILE, domain),
        "compiled_program": wh.file(PROGRAM_FILE, domain),
        "example_index": wh.file(INDEX_FILE, domain),
    }

    def finished() -> list[str]:
        return [s for s in steps if _written_since(outputs.get(s) or wh.partition_file(s, domain), started)]

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        transient=False,
    ) as progress:
        task = progress.add_task(f"{domain}: starting", total=len(steps))
        while not done.is_set():
            written = finished()
            current = next((s for s in steps if s not in written), "done")
            live = read_progress(wh.progress_path(domain))
            extra = ""
            if (
                live is not None
                and live.asset == current
                and live.updated_at >= started
                and not live.finished
            ):
                extra = f"  {live.line()}"
            progress.update(task, completed=len(written), description=f"{domain}: {current}{extra}")
            # An object store is polled over the network: less often than a local disk.
            done.wait(2.0 if wh.is_remote else 0.5)
        progress.update(task, completed=len(finished()), description=f"{domain}: finished")


def _written_since(path: StoragePath, started: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime >= started - 1
    except (OSError, NotImplementedError, KeyError):  # a store without modification times: not known yet
        return False


@app.command()
def generate(
    domain: Annotated[str, typer.Option(help="Domain to materialize (a spec in the schemas folder).")],
    count: Annotated[int | None, typer.Option(help="Examples to generate (overrides target_count).")] = None,
    profile: ProfileOpt = None,
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write a JSON run report: per asset its seconds, rows, model calls, tokens, cost."),
    ] = None,
) -> None:
    """Materialize the whole graph for one domain, with a progress bar."""
    import warnings

    import dagster as dg

    # Dagster flags partitioned asset checks as a preview feature on every load: not the user's concern.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
    from synth_pipelines.runner import failure_messages, materialize_domain, run_report, summarize

    domain = _domain(domain)
    if domain not in discover_specs(_schemas(schemas)):
        raise _fail(
            f"no spec {Path(_schemas(schemas)) / (domain + '.yaml')}; create it with `synth schema new`"
        )
    wh = _warehouse(warehouse)
    resources = {
        "warehouse": WarehouseResource(
            root=str(wh.root), state_dir=str(wh.state_dir), schemas_dir=_schemas(schemas)
        ),
        "llm": LLMResource(profile=_profile(profile)),
        "embedder": EmbedderResource(),
    }
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    done = threading.Event()
    started = time.time()
    poller = threading.Thread(target=_progress_poller, args=(wh, domain, started, done), daemon=True)
    poller.start()
    try:
        result = materialize_domain(domain, instance=instance, target_count=count, resources=resources)
    finally:
        done.set()
        poller.join(5)
    elapsed = time.time() - started
    typer.echo(summarize(domain, result, wh, elapsed))
    if report is not None:
        report.write_text(json.dumps(run_report(domain, instance, result, elapsed), indent=2))
    if not result.success:
        messages = failure_messages(result)
        raise _fail("; ".join(m.strip().splitlines()[0] for m in messages if m) or "the run failed")


# --------------------------------------------------------------------------------------------- schema


@schema_app.command("templates")
def schema_templates() -> None:
    """List the spec templates (one per example type)."""
    for path in sorted(TEMPLATES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        typer.echo(f"{path.stem:<22} {data.get('description', '')}")


@schema_app.command("new")
def schema_new(
    domain: Annotated[str, typer.Argument(help="New domain name, e.g. support_tickets.")],
    type_: Annotated[
        str, typer.Option("--type", help="Template: one of `synth schema templates`.")
    ] = "api-example",
    schemas: SchemasOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec.")] = False,
) -> None:
    """Create schemas/<domain>.yaml from a template, ready to edit."""
    domain = _domain(domain)
    template = TEMPLATES_DIR / f"{type_}.yaml"
    if not template.is_file():
        known = ", ".join(p.stem for p in sorted(TEMPLATES_DIR.glob("*.yaml")))
        raise _fail(f"unknown template {type_!r}; choose one of: {known}", 2)
    target = Path(_schemas(schemas)) / f"{domain}.yaml"
    if target.exists() and not force:
        raise _fail(f"{target} exists; pass --force to overwrite")
    text = template.read_text()
    data = yaml.safe_load(text)
    text = text.replace(f"domain: {data['domain']}", f"domain: {domain}", 1)
    parse_spec(yaml.safe_load(text), path=target)  # the template must stay valid
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    typer.echo(
        f"created {target} from the {type_} template; edit fields, matrix and seed_problems, then "
        f"`synth schema validate {target}`"
    )


@schema_app.command("validate")
def schema_validate(file: Annotated[Path, typer.Argument(help="A spec YAML file.")]) -> None:
    """Validate a spec: prints a summary, or every problem with its field path."""
    try:
        loaded = load_spec(file)
    except SpecError as e:
        typer.secho(str(e), err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from None
    spec = loaded.spec
    cells = 1
    for values in spec.matrix.dimensions.values():
        cells *= len(values)
    typer.echo(
        f"{file}: valid {spec.type} spec '{spec.name}' v{spec.version_str}, {len(spec.fields)} fields, "
        f"{cells * len(spec.matrix.complexity)} matrix cells, target {spec.target_count}, "
        f"training format {spec.training_format}"
        + (f", {len(spec.rules)} rule(s) run on sample rows without error" if spec.rules else "")
    )


# --------------------------------------------------------------------------------------------- validate


@app.command("validate")
def validate_file(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet of examples (one object per row).")],
    domain: Annotated[str, typer.Option(help="Domain whose spec and validators to apply.")],
    report: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    models: Annotated[
        bool, typer.Option("--models/--no-models", help="Also run the validator models.")
    ] = True,
    profile: ProfileOpt = None,
    schemas: SchemasOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Run the rule-based and model validators on an external file and write a report."""
    from synth_pipelines.validation.external import validate_rows

    domain = _domain(domain)
    if not file.is_file():
        raise _fail(f"{file} does not exist")
    try:
        spec = load_spec(spec_path_for(_schemas(schemas), domain)).spec
    except (SpecError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    if spec.statistical:
        raise _fail(f"{domain!r} is a {spec.type} domain: row validation applies to example domains")
    if file.suffix not in (".jsonl", ".parquet"):
        raise _fail(f"{file}: expected a .jsonl or .parquet file")
    rows = read_rows_file(file)
    from synth_pipelines.llm.config import ProfileError
    from synth_pipelines.resources import LLMResource
    from synth_pipelines.validation.calibration import resolve_thresholds

    resource = LLMResource(profile=_profile(profile))
    try:
        panel = resource.load_profile()
    except ProfileError as e:
        raise _fail(str(e)) from None
    spec, _ = resolve_thresholds(spec, panel)
    client = resource.client(_warehouse(warehouse).cache_path) if models else None
    from synth_pipelines.llm.embeddings import embed_texts

    result = validate_rows(spec, rows, client, embed_texts)
    out = report or file.with_name(f"{file.stem}.validation.json")
    out.write_text(json.dumps(result, indent=2, default=str))
    s = result["summary"]
    typer.echo(
        f"{s['passed']}/{s['rows']} rows pass ({s['pass_rate']:.0%}); rejected by stage: "
        f"{s['rejected_by_stage'] or 'none'}; report: {out}"
    )
    if s["passed"] < s["rows"]:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------- calibrate


@app.command()
def calibrate(
    labels: Annotated[list[Path], typer.Argument(help="Labelled JSONL files (see README, Quality gates).")],
    domain: Annotated[
        str | None, typer.Option(help="The spec to apply (default: each file's name, e.g. api_development).")
    ] = None,
    profile: ProfileOpt = None,
    schemas: SchemasOpt = None,
    warehouse: WarehouseOpt = None,
    diversity: Annotated[
        bool,
        typer.Option(
            help="Also calibrate diversity_threshold from what the generator reached on the domains "
            "in the warehouse (80% of the lowest mean pairwise cosine distance)."
        ),
    ] = False,
    save: Annotated[
        Path | None,
        typer.Option(help="Write a copy of the profile with this calibration to this YAML file."),
    ] = None,
) -> None:
    """Score labelled examples with the rules, the on-topic similarity and the validator panel, and
    print the consensus threshold (and on-topic minimum, kept only where it helps) that maximize
    Cohen's kappa, per file and pooled, with accuracy and the confusion counts, plus the
    `roles.calibration` block for the profile (--save writes the calibrated profile)."""
    from datetime import UTC, datetime

    from synth_pipelines.llm.config import ProfileError
    from synth_pipelines.resources import LLMResource
    from synth_pipelines.validation.calibration import (
        LabelledFileError,
        field_agreement_threshold,
        load_labelled,
        panel_kappa_gain,
        resolve_thresholds,
    )
    from synth_pipelines.validation.calibration import calibrate as run_calibration

    resource = LLMResource(profile=_profile(profile), api_key=os.environ.get("SYNTH_OPENAI_API_KEY") or None)
    try:
        panel = resource.load_profile()
    except ProfileError as e:
        raise _fail(str(e)) from None
    sets = []
    for file in labels:
        name = _domain(domain or file.stem)
        try:
            spec = load_spec(spec_path_for(_schemas(schemas), name)).spec
            rows = load_labelled(file)
        except (SpecError, FileNotFoundError, LabelledFileError) as e:
            raise _fail(str(e)) from None
        sets.append((resolve_thresholds(spec, panel)[0], str(file), rows))
    client = resource.client(_warehouse(warehouse).cache_path)
    from synth_pipelines.llm.embeddings import embed_texts, pair_similarity

    results, pooled = run_calibration(
        sets, client, list(panel.roles.validators), pair_similarity, embed_texts
    )
    fields = field_agreement_threshold(results)
    for r in results:
        typer.echo(f"{r.domain} ({r.file}): best {r.best.summary()}")
        typer.echo(f"  with the on-topic gate: {r.best_with_on_topic.summary()}")
        typer.echo(f"  rules alone: {r.rules_only.summary()}")
    typer.echo(f"all sets: best {pooled.summary()}")
    typer.echo(
        f"cross-field agreement: {fields.summary()}" if fields else "cross-field agreement: no gain, gate off"
    )
    block = {
        "calibration": {
            "consensus_threshold": pooled.threshold,
            "on_topic_threshold": pooled.on_topic_threshold,
            "kappa": pooled.kappa,
            "accuracy": pooled.accuracy,
            "panel_kappa_gain": panel_kappa_gain(results),
            "field_agreement_threshold": round(fields.threshold or 0.0, 4) if fields else -1.0,
            "rows": pooled.rows,
            "labelled_sets": [str(f) for f in labels],
            "measured": f"synth calibrate, {datetime.now(UTC).date().isoformat()}",
        }
    }
    if diversity:
        from synth_pipelines.validation.calibration import diversity_calibration

        reached, threshold = diversity_calibration(_warehouse(warehouse))
        if not reached:
            raise _fail(
                "--diversity: no domain in the warehouse has example_embeddings yet; generate some first"
            )
        for name, value in reached.items():
            typer.echo(f"diversity reached by the generator on {name}: {value:.3f}")
        block["calibration"]["diversity_threshold"] = threshold
    typer.echo(f"\n# under roles: in the profile {panel.name!r}\n" + yaml.safe_dump(block, sort_keys=False))
    if save is not None:
        from synth_pipelines.llm.config import profile_path

        data = yaml.safe_load(profile_path(_profile(profile)).read_text())
        data.setdefault("roles", {})["calibration"] = block["calibration"]
        save.write_text(yaml.safe_dump(data, sort_keys=False))
        typer.echo(f"calibrated profile written to {save}; use it with SYNTH_PROFILE={save}")


# --------------------------------------------------------------------------------------------- train


@app.command()
def train(
    program: Annotated[Path, typer.Argument(help="A Python file defining a dspy.Module subclass.")],
    domain: Annotated[str, typer.Option(help="The domain whose validated examples to train on.")],
    module: Annotated[
        str | None, typer.Option(help="The dspy.Module subclass to use (default: the first in the file).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="exact_match, semantic_similarity, llm_judge, or FILE.py:FUNCTION / FUNCTION (in the "
            "program "
            "file) called as fn(example, prediction) (default: the spec's program metric)."
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(help="labeled_few_shot, bootstrap_few_shot or miprov2 (default: the spec's)."),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(min=1, help="bootstrap_few_shot rounds or miprov2 trials (labeled_few_shot has none)."),
    ] = None,
    train_fraction: Annotated[
        float | None, typer.Option(min=0.01, max=0.99, help="Share of examples to train on (default 0.7).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where to save the program state JSON (default: the warehouse's programs folder)."),
    ] = None,
    profile: ProfileOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Train your own DSPy module on a domain's validated examples: fields mapped by name, compiled
    on the train split, scored on held-out examples with a 95% interval, saved as state JSON, and
    the score appended to agent_performance (source train:<file stem>)."""
    from datetime import UTC, datetime

    from synth_pipelines.learning.outcomes import record_performance
    from synth_pipelines.learning.program import (
        PROVIDER_ERRORS,
        example_rows,
        performance_row,
        program_threads,
        save_program,
    )
    from synth_pipelines.learning.train import TrainError, train_user_program
    from synth_pipelines.llm.config import ProfileError
    from synth_pipelines.resources import EmbedderResource, LLMResource

    name = _domain(domain)
    wh = _warehouse(warehouse)
    spec = wh.materialized_spec(name)
    table = wh.read_partition("validated_examples", name)
    if spec is None or table is None:
        raise _fail(
            f"domain {name!r} has no validated examples in {wh.root}; run synth generate --domain {name}"
        )
    rows = example_rows(table.select(["example_id", "cell_id", "example_json"]).to_pydict())
    resource = LLMResource(profile=_profile(profile), api_key=os.environ.get("SYNTH_OPENAI_API_KEY") or None)
    embedder = EmbedderResource()
    try:
        client = resource.client(wh.cache_path)
        threads = program_threads(client)
        user, run = train_user_program(
            spec,
            rows,
            client,
            program,
            embed=lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path),
            class_name=module,
            metric=metric,
            optimizer=optimizer,
            iterations=iterations,
            train_fraction=train_fraction,
            threads=threads,
        )
    except (TrainError, ProfileError) as e:
        raise _fail(str(e)) from None
    except ValueError as e:
        raise _fail(f"training on {name!r}: {e}") from None
    except PROVIDER_ERRORS as e:
        raise _fail(f"training on {name!r}: {e}. Replies so far are cached; rerun to resume.") from None
    score = run.score
    target = output if output is not None else wh.root / TRAINED_FILE.format(domain=name, program=user.name)
    save_program(run.compiled, target)
    wh.write_json(
        TRAINED_SCORE_FILE.format(domain=name, program=user.name),
        {**score.model_dump(), "program": str(program), "module": user.cls.__name__, "state": str(target)},
    )
    run_id = f"train-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    record_performance(wh, performance_row(name, f"train:{user.name}", run_id, score))
    interval = f" (95% CI {score.ci_low:.3f}-{score.ci_high:.3f})" if score.ci_low is not None else ""
    typer.echo(
        f"{user.cls.__name__} from {program}: inputs {user.inputs} -> outputs {user.outputs}\n"
        f"{score.optimizer}, trained on {score.n_train}, held-out {score.metric} {score.score:.3f}{interval} "
        f"over {score.n_eval} examples ({score.parse_failures} unparsable), {score.lm_calls} model calls\n"
        f"saved: {target}\nrecorded in agent_performance as train:{user.name}"
    )


# --------------------------------------------------------------------------------------------- benchmark


@app.command()
def benchmark(
    domain: Annotated[str, typer.Option(help="The domain to generate (a spec in the schemas folder).")],
    strategies: Annotated[
        str, typer.Option(help="Comma-separated: single-model, multi-model, dspy-multi-model, or your own.")
    ] = "single-model,multi-model",
    count: Annotated[int, typer.Option(min=1, help="Target count per strategy.")] = 16,
    output: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    compare: Annotated[
        Path | None, typer.Option(help="A previous report: show each value's change against it.")
    ] = None,
    strategies_file: Annotated[
        Path | None, typer.Option(help="YAML of your own strategies: name -> generator, validators, ...")
    ] = None,
    labelled: Annotated[
        Path | None,
        typer.Option(
            help="Labelled JSONL for judge kappa (default: tests/data/labelled/<domain>.jsonl when present)."
        ),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Where the scratch warehouses and the shared cache go.")
    ] = Path("benchmark_runs"),
    profile: ProfileOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """Run generation strategies side by side on one domain, each into its own scratch warehouse with
    a shared response cache, and report quality (pass rate, consensus, diversity, near duplicates,
    judge kappa) and cost (calls, tokens, dollars, wall time, rows per second)."""
    from synth_pipelines.llm.config import ProfileError
    from synth_pipelines.service.benchmark import (
        BenchmarkError,
        load_report,
        load_strategies,
        render_report,
        run_benchmark,
    )

    name = _domain(domain)
    specs = Path(_schemas(schemas))
    try:
        load_spec(spec_path_for(specs, name))
        chosen = load_strategies([s.strip() for s in strategies.split(",") if s.strip()], strategies_file)
        baseline = load_report(compare) if compare is not None else None
    except (SpecError, FileNotFoundError, BenchmarkError) as e:
        raise _fail(str(e)) from None
    default_labels = Path("tests/data/labelled") / f"{name}.jsonl"
    labels = labelled if labelled is not None else (default_labels if default_labels.is_file() else None)
    try:
        report = run_benchmark(
            name,
            chosen,
            count=count,
            schemas=specs,
            profile=_profile(profile),
            workdir=workdir,
            labelled=labels,
        )
    except (ProfileError, BenchmarkError) as e:
        raise _fail(str(e)) from None
    typer.echo(render_report(report, baseline))
    if output is not None:
        output.write_text(report.model_dump_json(indent=2))
        typer.echo(f"report written to {output}")
    if not all(r.success for r in report.strategies):
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------- plan


@app.command()
def plan(
    domain: Annotated[str, typer.Option(help="The domain to plan (a spec in the schemas folder).")],
    count: Annotated[
        int | None, typer.Option(help="Target count (default: the spec's target_count).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds to generate when the spec lists none.")] = 5,
    profile: ProfileOpt = None,
    schemas: SchemasOpt = None,
    warehouse: WarehouseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    save: Annotated[
        bool, typer.Option(help="Keep the plan so the next run records planned vs actual in its metadata.")
    ] = True,
) -> None:
    """Forecast a run before it spends anything: model calls, tokens, dollars and wall time per
    asset, with what the cache already answers (no model is called)."""
    from synth_pipelines.learning.plan import render_plan
    from synth_pipelines.service.operations import ServiceError, ServiceSettings, SynthService

    root, state = location_from_env(warehouse)
    service = SynthService(
        ServiceSettings(
            warehouse_root=root, state_dir=state, schemas_dir=_schemas(schemas), profile=_profile(profile)
        )
    )
    try:
        forecast = service.plan(_domain(domain), target_count=count, seed_count=seeds, save=save)
    except ServiceError as e:
        raise _fail(e.message) from None
    if as_json:
        typer.echo(json.dumps({**forecast.model_dump(mode="json"), "totals": forecast.summary()}, indent=2))
    else:
        typer.echo(render_plan(forecast))


# --------------------------------------------------------------------------------------------- doctor


@app.command()
def doctor(profile: ProfileOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Call each model of a profile once: reachable, key accepted, the structured-output mode that
    works (remembered for runs), latency and tokens. On a failure, says what to change."""
    from synth_pipelines.llm.client import run_sync
    from synth_pipelines.llm.config import ProfileError
    from synth_pipelines.llm.doctor import check_models, render
    from synth_pipelines.resources import LLMResource

    resource = LLMResource(profile=_profile(profile), api_key=os.environ.get("SYNTH_OPENAI_API_KEY") or None)
    try:
        client = resource.client(_warehouse(warehouse).cache_path)
    except ProfileError as e:
        raise _fail(str(e)) from None
    reports = run_sync(check_models(dict(client.profile.models), client.backends, client.modes))
    typer.echo(render(reports))
    failed = [r.model for r in reports if not r.ok]
    if failed:
        raise _fail(f"{len(failed)} of {len(reports)} model(s) not usable: {', '.join(failed)}")


# --------------------------------------------------------------------------------------------- status


@app.command()
def status(warehouse: WarehouseOpt = None) -> None:
    """Per-domain counts, pass rate, diversity, program score and last run."""
    from synth_pipelines.warehouse.progress import running
    from synth_pipelines.warehouse.status import domain_status

    wh = _warehouse(warehouse)
    rows = domain_status(wh)
    live = running(wh.progress_path("status").parent)
    if not rows and not live:
        raise _fail(f"nothing materialized under {wh.root} yet; run `synth generate --domain ...`")
    for snap in live:
        typer.echo(f"in progress: {snap.domain} {snap.asset}: {snap.line()}")
    if not rows:
        return
    header = (
        f"{'domain':<22}{'generated':>10}{'accepted':>10}{'pass':>7}{'diversity':>11}{'program':>9}  last run"
    )
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r['domain']:<22}{r['generated']:>10}{r['accepted']:>10}{_pct(r['pass_rate']):>7}"
            f"{_num(r['diversity']):>11}{_num(r['program_score']):>9}  {r['last_run'] or '-'}"
        )


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------------------------- export


@app.command()
def export(
    domain: Annotated[str, typer.Option(help="Domain to export.")],
    out: Annotated[
        str, typer.Option(help="Output folder or fsspec URL (Parquet, JSONL and README.md card).")
    ],
    format_: Annotated[
        str | None,
        typer.Option(
            "--format", help="sft, dpo, qa or grpo-verifiable (default: the spec's training_format)."
        ),
    ] = None,
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """Write a training export and its dataset card."""
    from synth_pipelines.warehouse.exports import FORMATS, build_export

    domain = _domain(domain)
    wh = _warehouse(warehouse)
    try:
        out_dir = storage_location(out)
    except StorageError as e:
        raise _fail(f"--out: {e}", 2) from None
    # The spec the data was validated with (thresholds resolved), not today's YAML.
    spec = wh.materialized_spec(domain)
    if spec is None:
        raise _fail(f"{domain!r} has not been generated in {wh.root}; run `synth generate --domain {domain}`")
    fmt = format_ or spec.training_format
    if fmt not in FORMATS:
        raise _fail(f"format {fmt!r} is not exportable; choose one of {', '.join(FORMATS)}", 2)
    try:
        result = build_export(wh, spec, fmt, out_dir)  # type: ignore[arg-type]
    except (ValueError, StorageError) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"{result.rows} rows ({', '.join(f'{k} {v}' for k, v in result.splits.items()) or 'empty'}) -> "
        f"{result.parquet}, {result.jsonl}; card {result.card}"
    )


# --------------------------------------------------------------------------------------------- outcomes


@app.command("record-outcome")
def record_outcome(
    domain: Annotated[str, typer.Option(help="Domain the agent worked in.")],
    success: Annotated[bool, typer.Option("--success/--failure", help="Did the task succeed?")],
    outcome_id: Annotated[str | None, typer.Option(help="Unique id (default: generated).")] = None,
    cell_id: Annotated[str | None, typer.Option(help="Matrix cell the task belongs to, if known.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Task tag (repeatable).")] = None,
    agent: Annotated[str, typer.Option(help="Which agent reports.")] = "cli",
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """Record one agent outcome in the agent_outcomes table."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    row = {
        "outcome_id": outcome_id or f"cli-{now.strftime('%Y%m%dT%H%M%S%f')}",
        "domain": domain,
        "cell_id": cell_id,
        "tags": tag or [],
        "success": success,
        "recorded_at": now,
        "agent": agent,
    }
    result = record_outcomes(
        _warehouse(warehouse), [row], known_domains=set(discover_specs(_schemas(schemas)))
    )
    typer.echo(result.summary())
    if result.rejected:
        raise typer.Exit(code=1)


@app.command("ingest-outcomes")
def ingest_outcomes(
    files: Annotated[list[Path], typer.Argument(help="JSONL or Parquet files of outcomes.")],
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """Record outcomes from files; good rows are kept, bad rows are listed with their reason."""
    wh, known = _warehouse(warehouse), set(discover_specs(_schemas(schemas)))
    failed = False
    for path in files:
        if not path.is_file():
            raise _fail(f"{path} does not exist")
        result = record_outcomes(wh, read_rows_file(path), known_domains=known)
        typer.echo(f"{path}: {result.summary()}")
        failed = failed or bool(result.rejected)
    if failed:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------- service


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    domain: Annotated[str, typer.Option(help="Domain to search.")],
    k: Annotated[int, typer.Option(help="How many examples to return.")] = 10,
    exact: Annotated[bool, typer.Option(help="Exact DuckDB search even when an ANN index exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """The validated examples nearest in meaning to QUERY, with similarity, consensus and provenance."""
    from synth_pipelines.service.operations import ServiceError, ServiceSettings, SynthService

    wh = _warehouse(warehouse)
    settings = ServiceSettings(
        warehouse_root=str(wh.root),
        state_dir=str(wh.state_dir),
        schemas_dir=_schemas(schemas),
        profile=_profile(None),
    )
    try:
        result = SynthService(settings).search(domain, query, k=k, exact=exact)
    except ServiceError as e:
        raise _fail(e.message) from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(f"{len(result.hits)} of {result.searched} examples ({result.method} search)")
    for rank, hit in enumerate(result.hits, start=1):
        consensus = "-" if hit.consensus is None else f"{hit.consensus:.2f}"
        text = json.dumps(hit.example, ensure_ascii=False)
        typer.echo(f"{rank:>3}. {hit.similarity:.3f}  consensus {consensus}  {hit.example_id}  {text[:160]}")


def _default_dagster_home() -> None:
    """Runs launched by the API or the MCP tools must land in an instance the UI reads: without
    DAGSTER_HOME, use ./.dagster_home as `make dev` does (created, with the project's dagster.yaml
    when there is one)."""
    if os.environ.get("DAGSTER_HOME"):
        return
    home = Path(".dagster_home").resolve()
    home.mkdir(exist_ok=True)
    project_config = Path("dagster.yaml")
    if project_config.is_file() and not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(project_config.read_text())
    os.environ["DAGSTER_HOME"] = str(home)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; other than 127.0.0.1 needs SYNTH_API_TOKEN.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host header name to answer to (repeatable; default: loopback names and --host)."
        ),
    ] = None,
) -> None:
    """Serve the REST API (FastAPI on uvicorn; OpenAPI docs at /docs). Settings come from the same
    environment as the pipeline (SYNTH_WAREHOUSE, SYNTH_SCHEMAS, SYNTH_PROFILE, DAGSTER_HOME, which
    defaults to ./.dagster_home as for `make dev`)."""
    import uvicorn

    from synth_pipelines.service.api import create_app
    from synth_pipelines.service.operations import ServiceError

    _default_dagster_home()
    try:
        app_ = create_app(host=host, allowed_hosts=allowed_host or None)
    except ServiceError as e:
        raise _fail(e.message, 2) from None
    uvicorn.run(app_, host=host, port=port, log_level="info")


@app.command("mcp")
def mcp_server(
    transport: Annotated[str, typer.Option(help="stdio or streamable-http.")] = "stdio",
    host: Annotated[str, typer.Option(help="Address for streamable-http.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for streamable-http.")] = 8765,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="streamable-http: a Host header name to answer to (repeatable)."),
    ] = None,
) -> None:
    """Serve the MCP tools (synth_generate, synth_status, synth_validate, synth_search,
    synth_record_outcome, synth_list_domains) and each domain's spec and card as resources."""
    from synth_pipelines.service.mcp_server import serve_mcp

    if transport not in ("stdio", "streamable-http"):
        raise _fail(f"--transport {transport!r}: choose stdio or streamable-http", 2)
    from synth_pipelines.service.operations import ServiceError

    _default_dagster_home()
    try:
        serve_mcp(transport, host=host, port=port, allowed_hosts=allowed_host or None)  # type: ignore[arg-type]
    except ServiceError as e:
        raise _fail(e.message, 2) from None


def main() -> None:
    """The ``synth`` entry point: run the app, then skip interpreter teardown.

    Every command has written and closed what it opened by the time it returns; teardown would only
    add pages of duckdb nanobind "leaked instance" warnings after the command's own output.
    """
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
