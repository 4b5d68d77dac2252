"""The ``synth`` command line's argument and option types (names, help texts, bounds), so that the
commands in ``cli.py`` read as what they do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# Shared by several commands.
Warehouse = Annotated[
    str | None, typer.Option(help="Warehouse root (default $SYNTH_WAREHOUSE or ./warehouse).")
]
Schemas = Annotated[str | None, typer.Option(help="Specs folder (default $SYNTH_SCHEMAS or ./schemas).")]
Profile = Annotated[
    str | None, typer.Option(help="Provider profile name or YAML path (default $SYNTH_PROFILE or local).")
]
Domain = Annotated[str, typer.Option(help="The domain (a spec in the schemas folder).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
AllowedHost = Annotated[
    list[str] | None,
    typer.Option(help="A Host header name to answer to (repeatable; default: loopback names and --host)."),
]

# generate
Count = Annotated[int | None, typer.Option(help="Examples to generate (overrides target_count).")]
RunReport = Annotated[
    Path | None,
    typer.Option(help="Write a JSON run report: per asset its seconds, rows, model calls, tokens, cost."),
]

# schema
NewDomain = Annotated[str, typer.Argument(help="New domain name, e.g. support_tickets.")]
Template = Annotated[str, typer.Option("--type", help="Template: one of `synth schema templates`.")]
Force = Annotated[bool, typer.Option(help="Overwrite an existing spec.")]
SpecFile = Annotated[Path, typer.Argument(help="A spec YAML file.")]

# validate, calibrate
ExamplesFile = Annotated[Path, typer.Argument(help="JSONL or Parquet of examples (one object per row).")]
ReportFile = Annotated[Path | None, typer.Option(help="Where to write the JSON report.")]
Models = Annotated[bool, typer.Option("--models/--no-models", help="Also run the validator models.")]
Labels = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Labelled JSONL files (docs/quality.md); none: --domain's review labels (docs/review.md)."
    ),
]
LabelsDomain = Annotated[
    str | None, typer.Option(help="The spec to apply (default: each file's name, e.g. api_development).")
]
Diversity = Annotated[
    bool,
    typer.Option(
        help="Also calibrate diversity_threshold from what the generator reached on the domains in the "
        "warehouse (80% of the lowest mean pairwise cosine distance)."
    ),
]
SaveProfile = Annotated[
    Path | None,
    typer.Option("--save", help="Write a copy of the profile with this calibration to this YAML file."),
]

# train
Program = Annotated[Path, typer.Argument(help="A Python file defining a dspy.Module subclass.")]
Module = Annotated[
    str | None, typer.Option(help="The dspy.Module subclass to use (default: the first in the file).")
]
Metric = Annotated[
    str | None,
    typer.Option(
        help="exact_match, semantic_similarity, llm_judge, or FILE.py:FUNCTION / FUNCTION (in the program "
        "file) called as fn(example, prediction) (default: the spec's program metric)."
    ),
]
Optimizer = Annotated[
    str | None, typer.Option(help="labeled_few_shot, bootstrap_few_shot or miprov2 (default: the spec's).")
]
Iterations = Annotated[
    int | None,
    typer.Option(min=1, help="bootstrap_few_shot rounds or miprov2 trials (labeled_few_shot has none)."),
]
TrainFraction = Annotated[
    float | None, typer.Option(min=0.01, max=0.99, help="Share of examples to train on (default 0.7).")
]
StateFile = Annotated[
    Path | None,
    typer.Option(
        "--output", help="Where to save the program state JSON (default: the warehouse's programs folder)."
    ),
]

# benchmark
Strategies = Annotated[
    str, typer.Option(help="Comma-separated: single-model, multi-model, dspy-multi-model, or your own.")
]
StrategyCount = Annotated[int, typer.Option("--count", min=1, help="Target count per strategy.")]
BenchOutput = Annotated[Path | None, typer.Option("--output", help="Write the report as JSON here.")]
Compare = Annotated[Path | None, typer.Option(help="A previous report: show each value's change against it.")]
StrategiesFile = Annotated[
    Path | None, typer.Option(help="YAML of your own strategies: name -> generator, validators, ...")
]
Labelled = Annotated[
    Path | None,
    typer.Option(
        help="Labelled JSONL for judge kappa (default: tests/data/labelled/<domain>.jsonl when present)."
    ),
]
Workdir = Annotated[Path, typer.Option(help="Where the scratch warehouses and the shared cache go.")]

# plan
PlanCount = Annotated[
    int | None, typer.Option("--count", help="Target count (default: the spec's target_count).")
]
Seeds = Annotated[int, typer.Option(help="Seeds to generate when the spec lists none.")]
SavePlan = Annotated[
    bool,
    typer.Option(
        "--save/--no-save", help="Keep the plan so the next run records planned vs actual in its metadata."
    ),
]

# export
Out = Annotated[str, typer.Option(help="Output folder or fsspec URL (Parquet, JSONL and README.md card).")]
Format = Annotated[
    str | None,
    typer.Option(
        "--format", help="sft, dpo, qa, grpo-verifiable or retrieval (default: the spec's training_format)."
    ),
]

# outcomes
OutcomeDomain = Annotated[str, typer.Option(help="Domain the agent worked in.")]
Success = Annotated[bool, typer.Option("--success/--failure", help="Did the task succeed?")]
OutcomeId = Annotated[str | None, typer.Option(help="Unique id (default: generated).")]
CellId = Annotated[str | None, typer.Option(help="Matrix cell the task belongs to, if known.")]
Tag = Annotated[list[str] | None, typer.Option(help="Task tag (repeatable).")]
Agent = Annotated[str, typer.Option(help="Which agent reports.")]
OutcomeFiles = Annotated[list[Path], typer.Argument(help="JSONL or Parquet files of outcomes.")]

# review
ReviewCount = Annotated[int, typer.Option("--count", min=1, max=500, help="How many rows to queue.")]
Reviewer = Annotated[str, typer.Option(help="Whose labels: their labelled rows are not queued again.")]

# search
Query = Annotated[str, typer.Argument(help="What to look for, in words.")]
SearchDomain = Annotated[str, typer.Option(help="Domain to search.")]
K = Annotated[int, typer.Option(help="How many examples to return.")]
Exact = Annotated[bool, typer.Option(help="Exact DuckDB search even when an ANN index exists.")]

# serve, mcp
Host = Annotated[str, typer.Option(help="Address to bind; other than 127.0.0.1 needs SYNTH_API_TOKEN.")]
Port = Annotated[int, typer.Option(help="Port.")]
Transport = Annotated[str, typer.Option(help="stdio or streamable-http.")]
McpHost = Annotated[str, typer.Option("--host", help="Address for streamable-http.")]
McpPort = Annotated[int, typer.Option("--port", help="Port for streamable-http.")]
