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


def narrowed_enums(
    spec: DomainSpec, conditions: dict[str, str], complexity: str | None = None
) -> dict[str, list[Any]]:
    """The enum fields whose values the spec's rules decide for one matrix cell, and the values
    they allow, so generation can be constrained to them (a read task is only offered GET).

    For each rule whose ``when`` holds for the cell's conditions alone, and each enum field, the
    ``check`` is evaluated with that field set to each of its values and every other field NULL.
    Only a check that gives true or false for every value (it depends on that field alone, given
    the cell) narrows the field; a field whose rules would allow nothing is left as it is (the
    rules reject such rows anyway, and a generator must get some choice)."""
    enum_fields = {name: f.enum for name, f in spec.fields.items() if f.enum}
    if not spec.rules or not enum_fields:
        return {}
    key = (
        tuple((r.when, r.check) for r in spec.rules),
        tuple((n, tuple(map(str, v))) for n, v in enum_fields.items()),
        tuple(sorted(conditions.items())),
        complexity,
        tuple(sorted(spec.fields)),
        tuple(spec.matrix.dimensions),
    )
    cached = _NARROWED.get(key)
    if cached is None:
        cached = _narrow(spec, conditions, complexity, enum_fields)
        if len(_NARROWED) > 4096:
            _NARROWED.clear()
        _NARROWED[key] = cached
    return {name: list(values) for name, values in cached.items()}


_NARROWED: dict[tuple[Any, ...], dict[str, list[Any]]] = {}


def _narrow(
    spec: DomainSpec, conditions: dict[str, str], complexity: str | None, enum_fields: dict[str, list[Any]]
) -> dict[str, list[Any]]:
    import duckdb

    schema = rule_schema(spec)
    columns = condition_columns(spec)
    cell = {column: conditions.get(dimension) for dimension, column in columns.items()}
    if complexity is not None:
        cell[columns["complexity"]] = complexity
    probes: list[tuple[str, Any]] = [
        (name, value) for name, values in enum_fields.items() for value in values
    ]
    rows = [{ROW_COLUMN: i, **cell, name: value} for i, (name, value) in enumerate(probes)]
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return {}  # an enum value that does not fit its column type: leave the field open
    parts = []
    for k, rule in enumerate(spec.rules):
        applies = "true" if rule.when is None else f"coalesce(CAST(({rule.when}) AS BOOLEAN), false)"
        parts.append(f"{applies} AS w{k}, CAST(({rule.check}) AS BOOLEAN) AS c{k}")
    conn = _connect()
    try:
        conn.register("probes", table)
        result = conn.execute(
            f"SELECT {ROW_COLUMN}, {', '.join(parts)} FROM probes ORDER BY {ROW_COLUMN}"
        ).fetchall()
    except duckdb.Error:
        return {}  # rule_problems reports bad SQL; generation is not the place to fail on it
    finally:
        conn.close()
    allowed: dict[str, set[Any]] = {name: set(values) for name, values in enum_fields.items()}
    for k in range(len(spec.rules)):
        for name, values in enum_fields.items():
            outcomes = [
                (value, row[2 + 2 * k], row[1 + 2 * k])
                for row, (field, value) in zip(result, probes, strict=True)
                if field == name
            ]
            if not all(applies for _, _, applies in outcomes):
                continue  # the rule does not apply to this cell
            if any(ok is None for _, ok, _ in outcomes):
                continue  # the check depends on more than this field
            passing = {value for value, ok, _ in outcomes if ok}
            if passing and passing != set(values):
                allowed[name] &= passing
    return {
        name: [v for v in values if v in allowed[name]]
        for name, values in enum_fields.items()
        if allowed[name] and allowed[name] != set(values)
    }
