"""A spec's declarative rules: DuckDB SQL boolean expressions over an example's fields and its matrix
conditions, checked before any judge, vectorized over the whole batch.

```yaml
rules:
  - name: method_matches_operation
    when: "operation = 'delete'"          # matrix conditions are columns too
    check: "method = 'DELETE'"
    message: "a delete task must use DELETE"
```

Columns: every field of the spec, typed as in Parquet (arrays are DuckDB lists, objects structs:
``len(steps) >= 2``, ``address.city <> ''``), every matrix dimension by its name
(``condition_<name>`` when a field has that name) and ``complexity``. A row fails a rule when
``when`` holds (or there is no ``when``) and ``check`` is not true (false or NULL). Expressions run
on a DuckDB connection without file or network access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import duckdb

    from synth_pipelines.spec.model import DomainSpec, RuleSpec

ROW_COLUMN = "_row"


def condition_columns(spec: DomainSpec) -> dict[str, str]:
    """Matrix dimension -> its column name in rule expressions (plus ``complexity``)."""
    names = [*spec.matrix.dimensions, "complexity"]
    return {name: (f"condition_{name}" if name in spec.fields else name) for name in names}


def rule_schema(spec: DomainSpec) -> pa.Schema:
    """The columns a rule expression can use: the example's typed columns (as in Parquet), then
    the matrix conditions."""
    from synth_pipelines.spec.example_schema import example_arrow_schema

    conditions = [pa.field(column, pa.string()) for column in condition_columns(spec).values()]
    return pa.schema([pa.field(ROW_COLUMN, pa.int64()), *example_arrow_schema(spec), *conditions])


def rule_sql(rule: RuleSpec) -> str:
    """True when the row passes: ``when`` does not hold, or ``check`` is true."""
    check = f"coalesce(CAST(({rule.check}) AS BOOLEAN), false)"
    if rule.when is None:
        return check
    return f"(CASE WHEN coalesce(CAST(({rule.when}) AS BOOLEAN), false) THEN {check} ELSE true END)"


def _connect() -> duckdb.DuckDBPyConnection:
    import duckdb

    # A spec is data, not code: its SQL may compute, never read files or the network.
    return duckdb.connect(config={"enable_external_access": False})


def rule_problems(spec: DomainSpec) -> list[tuple[str, str]]:
    """Every rule whose SQL does not compile against the spec's columns, as (location, message)."""
    if not spec.rules:
        return []
    import duckdb

    problems: list[tuple[str, str]] = []
    conn = _connect()
    try:
        conn.register("examples", rule_schema(spec).empty_table())
        for i, rule in enumerate(spec.rules):
            for part in ("when", "check"):
                text = getattr(rule, part)
                if text is not None and ";" in text:
                    problems.append((f"rules.{i}.{part}", f"rule {rule.name!r}: one expression, no ';'"))
            try:
                conn.execute(f"SELECT {rule_sql(rule)} FROM examples LIMIT 0").fetchall()
            except duckdb.Error as e:
                first = str(e).strip().splitlines()[0]
                columns = ", ".join(rule_schema(spec).names[1:])
                problems.append(
                    (f"rules.{i}", f"rule {rule.name!r} is not a valid DuckDB boolean expression: {first} "
                     f"(columns: {columns})")
                )  # fmt: skip
    finally:
        conn.close()
    return problems


def failed_rules(
    spec: DomainSpec, examples: list[dict[str, Any]], conditions: list[dict[str, str]]
) -> list[list[str]]:
    """For each example (with its matrix conditions), the messages of the rules it fails, in one
    vectorized query."""
    if not spec.rules or not examples:
        return [[] for _ in examples]
    schema = rule_schema(spec)
    columns = condition_columns(spec)
    rows = []
    for i, (example, condition) in enumerate(zip(examples, conditions, strict=True)):
        row: dict[str, Any] = {ROW_COLUMN: i}
        for name in spec.fields:
            row[name] = example.get(name)
        for dimension, column in columns.items():
            row[column] = condition.get(dimension)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema)
    conn = _connect()
    try:
        conn.register("examples", table)
        passes = ", ".join(f"{rule_sql(rule)} AS r{k}" for k, rule in enumerate(spec.rules))
        result = conn.execute(f"SELECT {ROW_COLUMN}, {passes} FROM examples ORDER BY {ROW_COLUMN}").fetchall()
    finally:
        conn.close()
    messages = [rule.message or f"fails rule {rule.name}: {rule.check}" for rule in spec.rules]
    return [[messages[k] for k, ok in enumerate(row[1:]) if not ok] for row in result]
