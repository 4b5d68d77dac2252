"""A Great Expectations suite generated from a domain spec, run over the stored examples.

Types, bounds, enums, patterns, not-null and uniqueness all come from the spec's field list, so the
suite never drifts from the model that generated and validated the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from synth_pipelines.spec.model import DomainSpec, FieldSpec, spec_digest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_PY_TYPES = {
    "string": ["str"],
    "integer": ["int"],
    "number": ["float", "int"],
    "boolean": ["bool"],
    "array": ["list"],
    "object": ["dict"],
}


def expectations_for(spec: DomainSpec) -> list[Any]:
    """The suite's expectations, one group per field plus uniqueness."""
    import great_expectations as gx

    exp = gx.expectations
    out: list[Any] = []
    for name, field in spec.fields.items():
        out.append(exp.ExpectColumnToExist(column=name))
        if field.required:
            out.append(exp.ExpectColumnValuesToNotBeNull(column=name))
        out.append(exp.ExpectColumnValuesToBeInTypeList(column=name, type_list=_PY_TYPES[field.type]))
        out += _bounds(name, field)
    unique = spec.uniqueness_fields()
    key = uniqueness_key_column(spec)
    if key is not None:
        out.append(exp.ExpectColumnValuesToBeUnique(column=key))
    elif len(unique) == 1:
        out.append(exp.ExpectColumnValuesToBeUnique(column=unique[0]))
    else:
        out.append(exp.ExpectCompoundColumnsToBeUnique(column_list=unique))
    return out


def uniqueness_key_column(spec: DomainSpec) -> str | None:
    """The column that stands for the uniqueness fields when one of them is an array or an object.

    GE compares column values by hashing them, and a list or a dict cannot be hashed: on a spec
    without ``constraints.uniqueness`` (every field counts) and with an array field, the suite
    failed on two distinct rows (seen on a regular-expression domain, 2026-12-06). Such values are
    compared as their canonical JSON in one derived column; a spec field cannot be named so (field
    names are identifiers)."""
    unique = spec.uniqueness_fields()
    if all(spec.fields[name].type not in ("array", "object") for name in unique if name in spec.fields):
        return None
    return f"uniqueness key ({', '.join(unique)})"


def _bounds(name: str, field: FieldSpec) -> list[Any]:
    import great_expectations as gx

    exp = gx.expectations
    out: list[Any] = []
    if field.enum is not None:
        out.append(exp.ExpectColumnValuesToBeInSet(column=name, value_set=list(field.enum)))
    if field.type == "string" and (field.min_length is not None or field.max_length is not None):
        out.append(
            exp.ExpectColumnValueLengthsToBeBetween(
                column=name, min_value=field.min_length, max_value=field.max_length
            )
        )
    if field.type == "string" and field.pattern:
        out.append(exp.ExpectColumnValuesToMatchRegex(column=name, regex=field.pattern))
    if field.type in ("integer", "number") and (field.min is not None or field.max is not None):
        out.append(exp.ExpectColumnValuesToBeBetween(column=name, min_value=field.min, max_value=field.max))
    return out


def examples_frame(spec: DomainSpec, example_json: list[str]) -> pd.DataFrame:
    """One column per spec field, object dtype so GE checks each value's Python type."""
    examples = [json.loads(text) for text in example_json]
    frame = pd.DataFrame(
        {name: pd.Series([e.get(name) for e in examples], dtype=object) for name in spec.fields}
    )
    key = uniqueness_key_column(spec)
    if key is not None:
        unique = spec.uniqueness_fields()
        frame[key] = [json.dumps([e.get(n) for n in unique], sort_keys=True) for e in examples]
    return frame


# Bump when expectations_for or examples_frame change what the suite checks.
SUITE_VERSION = 2


def suite_input_digest(spec: DomainSpec, example_json: list[str]) -> str:
    """Everything the suite's verdict depends on: the spec's fields, the suite's code version, the
    Great Expectations release and the exact data. Computed without importing GE."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for part in (spec_digest(spec), str(SUITE_VERSION), version("great-expectations")):
        digest.update(part.encode())
        digest.update(b"\x00")
    for text in example_json:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def run_suite_cached(spec: DomainSpec, example_json: list[str], cache_dir: Path) -> dict[str, Any]:
    """:func:`run_suite`, remembered by :func:`suite_input_digest`: the same spec and data give the
    same verdict, so an unchanged rerun neither imports GE nor runs it. ``cached`` says which."""
    path = cache_dir / "great_expectations" / f"{suite_input_digest(spec, example_json)}.json"
    if path.is_file():
        return {**json.loads(path.read_text()), "cached": True}
    outcome = run_suite(spec, example_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(outcome, default=str))
    os.replace(tmp, path)
    return {**outcome, "cached": False}


def run_suite(spec: DomainSpec, example_json: list[str]) -> dict[str, Any]:
    """Validate the examples with the generated suite; return GE's verdict and a per-expectation summary."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # GE's "Calculating Metrics" bars would spill into `synth generate`'s own progress display.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("synth")
        .add_dataframe_asset(spec.domain)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{spec.domain}_spec_v{spec.version_str}"))
    for expectation in expectations_for(spec):
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="spec", data=batch, suite=suite)
    )
    result = validation.run(
        batch_parameters={"dataframe": examples_frame(spec, example_json)}, result_format="SUMMARY"
    )
    summary = []
    for r in result.results:
        config = r.expectation_config
        kwargs = config.kwargs if config is not None else {}
        summary.append(
            {
                "expectation": config.type if config is not None else "unknown",
                "column": kwargs.get("column") or kwargs.get("column_list"),
                "success": bool(r.success),
                "unexpected": r.result.get("unexpected_count"),
                "examples": [str(v)[:60] for v in (r.result.get("partial_unexpected_list") or [])[:3]],
                **({"error": error} if (error := _raised(r.exception_info)) else {}),
            }
        )
    stats = dict(result.statistics)
    return {"success": bool(result.success), "statistics": stats, "results": summary, "suite": suite.name}


def _raised(exception_info: Any) -> str | None:
    """The message of an exception GE caught while evaluating an expectation (it then reports the
    expectation as failed with nothing unexpected): without it a failure would not say why. GE
    keeps it flat, or per metric."""
    infos = (
        exception_info.values()
        if isinstance(exception_info, dict) and "raised_exception" not in exception_info
        else [exception_info]
    )
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            return str(info.get("exception_message") or "an exception")[:300]
    return None
