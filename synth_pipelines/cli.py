"""``synth``: a thin command line over the same code the assets and sensors use."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from synth_pipelines.outcomes import read_outcome_file, record_outcomes
from synth_pipelines.spec import discover_specs
from synth_pipelines.storage import Warehouse

app = typer.Typer(
    help="synth-pipelines: LLM training data as Dagster assets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _warehouse(root: str | None) -> Warehouse:
    return Warehouse(root or os.environ.get("SYNTH_WAREHOUSE", "warehouse"))


def _known_domains(schemas: str | None) -> set[str]:
    return set(discover_specs(schemas or os.environ.get("SYNTH_SCHEMAS", "schemas")))


WarehouseOpt = Annotated[
    str | None, typer.Option(help="Warehouse root (default $SYNTH_WAREHOUSE or ./warehouse).")
]
SchemasOpt = Annotated[str | None, typer.Option(help="Specs folder (default $SYNTH_SCHEMAS or ./schemas).")]


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
    report = record_outcomes(_warehouse(warehouse), [row], known_domains=_known_domains(schemas))
    typer.echo(report.summary())
    if report.rejected:
        raise typer.Exit(code=1)


@app.command("ingest-outcomes")
def ingest_outcomes(
    files: Annotated[
        list[Path], typer.Argument(help="JSONL or Parquet files of outcomes.", exists=True, dir_okay=False)
    ],
    warehouse: WarehouseOpt = None,
    schemas: SchemasOpt = None,
) -> None:
    """Record outcomes from files; good rows are kept, bad rows are listed with their reason."""
    wh, known = _warehouse(warehouse), _known_domains(schemas)
    failed = False
    for path in files:
        report = record_outcomes(wh, read_outcome_file(path), known_domains=known)
        typer.echo(f"{path}: {report.summary()}")
        failed = failed or bool(report.rejected)
    if failed:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
