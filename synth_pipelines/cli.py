"""``synth``: each command parses its arguments, calls one :class:`SynthService` operation (the one
the REST API and MCP tools call) and prints it. Errors: one line on stderr, exit 1 (2: bad input)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from synth_pipelines.service import cli_options as opt
from synth_pipelines.service import render
from synth_pipelines.service.models import ServiceError, ServiceSettings
from synth_pipelines.service.operations import SynthService

_QUIET = {"no_args_is_help": True, "pretty_exceptions_enable": False, "add_completion": False}
app = typer.Typer(help="synth-pipelines: LLM training data as Dagster assets.", **_QUIET)  # type: ignore[arg-type]
schema_app = typer.Typer(help="Domain spec templates and validation.", **_QUIET)  # type: ignore[arg-type]
app.add_typer(schema_app, name="schema")


@contextmanager
def _service(
    warehouse: str | None = None, schemas: str | None = None, profile: str | None = None
) -> Iterator[SynthService]:
    """The service for these options; a ServiceError becomes ``error: ...`` and its exit code."""
    try:
        yield SynthService(ServiceSettings.from_env(warehouse=warehouse, schemas=schemas, profile=profile))
    except ServiceError as e:
        typer.secho(f"error: {e.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=e.exit_code) from None


@app.command()
def generate(
    domain: opt.Domain,
    count: opt.Count = None,
    profile: opt.Profile = None,
    warehouse: opt.Warehouse = None,
    schemas: opt.Schemas = None,
    report: opt.RunReport = None,
) -> None:
    """Materialize the whole graph for one domain, with a progress bar."""
    with _service(warehouse, schemas, profile) as service:
        name = service.domain_name(domain)
        with render.progress_bar(service.warehouse, name, service.pipeline_steps()):
            run = service.generate(name, count=count, report=report)
        typer.echo(run.summary)
        if not run.success:
            raise ServiceError(run.error or "the run failed")


@schema_app.command("templates")
def schema_templates() -> None:
    """List the spec templates (one per example type)."""
    with _service() as service:
        typer.echo("\n".join(f"{name:<22} {about}" for name, about in service.spec_templates()))


@schema_app.command("new")
def schema_new(
    domain: opt.NewDomain,
    type_: opt.Template = "api-example",
    schemas: opt.Schemas = None,
    force: opt.Force = False,
) -> None:
    """Create schemas/<domain>.yaml from a template, ready to edit."""
    with _service(schemas=schemas) as service:
        target = service.new_spec(domain, type_, force=force)
        typer.echo(render.created(target, type_))


@schema_app.command("validate")
def schema_validate(file: opt.SpecFile) -> None:
    """Validate a spec: prints a summary, or every problem with its field path."""
    with _service() as service:
        typer.echo(service.check_spec(file))


@app.command("validate")
def validate_file(
    file: opt.ExamplesFile,
    domain: opt.Domain,
    report: opt.ReportFile = None,
    models: opt.Models = True,
    profile: opt.Profile = None,
    schemas: opt.Schemas = None,
    warehouse: opt.Warehouse = None,
) -> None:
    """Run the rule-based and model validators on an external file and write a report."""
    with _service(warehouse, schemas, profile) as service:
        result = service.validate_file(file, domain, models=models, report=report)
        typer.echo(render.validation(result))
    raise typer.Exit(code=int(result.report["summary"]["passed"] < result.report["summary"]["rows"]))


@app.command()
def calibrate(
    labels: opt.Labels = None,
    domain: opt.LabelsDomain = None,
    profile: opt.Profile = None,
    schemas: opt.Schemas = None,
    warehouse: opt.Warehouse = None,
    diversity: opt.Diversity = False,
    save: opt.SaveProfile = None,
) -> None:
    """Find the gate thresholds that agree best (Cohen's kappa) with labelled examples."""
    with _service(warehouse, schemas, profile) as service:
        run = service.calibrate(labels, domain=domain, diversity=diversity, save=save)
        typer.echo(render.calibration(run))


@app.command()
def train(
    program: opt.Program,
    domain: opt.Domain,
    module: opt.Module = None,
    metric: opt.Metric = None,
    optimizer: opt.Optimizer = None,
    iterations: opt.Iterations = None,
    train_fraction: opt.TrainFraction = None,
    output: opt.StateFile = None,
    profile: opt.Profile = None,
    warehouse: opt.Warehouse = None,
) -> None:
    """Train your own DSPy module on a domain's validated examples and score it held out."""
    with _service(warehouse, profile=profile) as service:
        choices = dict(module=module, metric=metric, optimizer=optimizer)
        run = service.train(
            program, domain, iterations=iterations, train_fraction=train_fraction, output=output, **choices
        )
        typer.echo(render.trained(run))


@app.command()
def benchmark(
    domain: opt.Domain,
    strategies: opt.Strategies = "single-model,multi-model",
    count: opt.StrategyCount = 16,
    output: opt.BenchOutput = None,
    compare: opt.Compare = None,
    strategies_file: opt.StrategiesFile = None,
    labelled: opt.Labelled = None,
    workdir: opt.Workdir = Path("benchmark_runs"),
    profile: opt.Profile = None,
    schemas: opt.Schemas = None,
) -> None:
    """Run generation strategies side by side on one domain; report their quality and cost."""
    with _service(schemas=schemas, profile=profile) as service:
        files = dict(strategies_file=strategies_file, compare=compare, labelled=labelled, output=output)
        report, baseline = service.benchmark(domain, strategies, count=count, workdir=workdir, **files)
        typer.echo(render.benchmark(report, baseline, output))
    raise typer.Exit(code=int(not all(r.success for r in report.strategies)))


@app.command()
def plan(
    domain: opt.Domain,
    count: opt.PlanCount = None,
    seeds: opt.Seeds = 5,
    profile: opt.Profile = None,
    schemas: opt.Schemas = None,
    warehouse: opt.Warehouse = None,
    as_json: opt.AsJson = False,
    save: opt.SavePlan = True,
) -> None:
    """Forecast a run's model calls, tokens, dollars and time per asset (no model is called)."""
    with _service(warehouse, schemas, profile) as service:
        forecast = service.plan(domain, target_count=count, seed_count=seeds, save=save)
        typer.echo(render.plan(forecast, as_json))


@app.command()
def doctor(profile: opt.Profile = None, warehouse: opt.Warehouse = None) -> None:
    """Call each model of a profile once: reachable, key, structured-output mode, latency."""
    with _service(warehouse, profile=profile) as service:
        reports = service.doctor()
        typer.echo(render.doctor(reports))
        if not all(r.ok for r in reports):
            raise ServiceError(render.doctor_failures(reports))


@app.command()
def status(warehouse: opt.Warehouse = None) -> None:
    """Per-domain counts, pass rate, diversity, program score and last run."""
    with _service(warehouse) as service:
        typer.echo(render.status(service.status()))


@app.command()
def export(
    domain: opt.Domain,
    out: opt.Out,
    format_: opt.Format = None,
    warehouse: opt.Warehouse = None,
    schemas: opt.Schemas = None,
) -> None:
    """Write a training export and its dataset card."""
    with _service(warehouse, schemas) as service:
        typer.echo(render.export(service.export(domain, out, format_)))


@app.command("record-outcome")
def record_outcome(
    domain: opt.OutcomeDomain,
    success: opt.Success,
    outcome_id: opt.OutcomeId = None,
    cell_id: opt.CellId = None,
    tag: opt.Tag = None,
    agent: opt.Agent = "cli",
    warehouse: opt.Warehouse = None,
    schemas: opt.Schemas = None,
) -> None:
    """Record one agent outcome in the agent_outcomes table."""
    with _service(warehouse, schemas) as service:
        ids = {"outcome_id": outcome_id, "cell_id": cell_id}
        result = service.record_outcome(domain, success, tags=tag, agent=agent, **ids)
        typer.echo(render.outcomes(result))
    raise typer.Exit(code=int(bool(result.rejected)))


@app.command("ingest-outcomes")
def ingest_outcomes(
    files: opt.OutcomeFiles, warehouse: opt.Warehouse = None, schemas: opt.Schemas = None
) -> None:
    """Record outcomes from files; good rows are kept, bad rows are listed with their reason."""
    with _service(warehouse, schemas) as service:
        results = service.ingest_outcome_files(files)
        typer.echo("\n".join(render.outcomes(result, str(path)) for path, result in results))
    raise typer.Exit(code=int(any(result.rejected for _, result in results)))


@app.command()
def review(
    domain: opt.Domain,
    count: opt.ReviewCount = 20,
    reviewer: opt.Reviewer = "reviewer",
    as_json: opt.AsJson = False,
    warehouse: opt.Warehouse = None,
) -> None:
    """Rows to label next (accepted and rejected, closest calls first); label them at /review/DOMAIN."""
    with _service(warehouse) as service:
        typer.echo(render.review(service.review_queue(domain, count=count, reviewer=reviewer), as_json))


@app.command()
def search(
    query: opt.Query,
    domain: opt.SearchDomain,
    k: opt.K = 10,
    exact: opt.Exact = False,
    as_json: opt.AsJson = False,
    warehouse: opt.Warehouse = None,
    schemas: opt.Schemas = None,
) -> None:
    """The validated examples nearest in meaning to QUERY, with similarity, consensus and provenance."""
    with _service(warehouse, schemas) as service:
        typer.echo(render.search(service.search(domain, query, k=k, exact=exact), as_json))


@app.command()
def serve(host: opt.Host = "127.0.0.1", port: opt.Port = 8000, allowed_host: opt.AllowedHost = None) -> None:
    """Serve the REST API and the review pages (OpenAPI docs at /docs)."""
    from synth_pipelines.service.api import serve_api

    with _service():
        serve_api(host=host, port=port, allowed_hosts=allowed_host or None)


@app.command("mcp")
def mcp_server(
    transport: opt.Transport = "stdio",
    host: opt.McpHost = "127.0.0.1",
    port: opt.McpPort = 8765,
    allowed_host: opt.AllowedHost = None,
) -> None:
    """Serve the MCP tools, and each domain's spec and card as resources."""
    from synth_pipelines.service.mcp_server import serve_mcp

    with _service():
        serve_mcp(transport, host=host, port=port, allowed_hosts=allowed_host or None)  # type: ignore[arg-type]


def main() -> None:
    """Run the app, then skip interpreter teardown (only duckdb "leaked instance" noise)."""
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
