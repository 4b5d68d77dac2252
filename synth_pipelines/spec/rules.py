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
``when`` holds (or there is no ``when``) and ``check`` is not true (false or NULL).

A rule is data, not code, so it is held to what a row-level predicate needs:

* it parses (DuckDB's own parser) as exactly one scalar expression: no subquery, no table function,
  no aggregate or window, no function that reads settings, variables, the environment or files,
  no sleep. It is re-rendered from its parse tree, so a comment in it cannot reshape the query;
* it runs on a connection without file or network access, one thread, a memory limit and a time
  limit (the query is interrupted);
* a rule that errors on a row rejects that row (stage ``rules``, the rule's name and DuckDB's
  message), never the batch; and a spec whose rule errors on sample rows its own schema allows is
  refused at load, before any model is called.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from synth_pipelines.spec.example_schema import example_arrow_schema
from synth_pipelines.spec.model import DomainSpec, FieldSpec, RuleSpec

if TYPE_CHECKING:
    import duckdb

ROW_COLUMN = "_row"
# What one rule query may use: a row-level predicate over a batch needs neither more memory nor time.
RULE_MEMORY_LIMIT = "128MB"
RULE_TIME_LIMIT_S = 20.0
# Functions a rule may not call (DuckDB's names, lower case): readers of settings, variables, the
# environment, the query or the catalog, and sleeps. Table, aggregate and pragma functions are
# refused by kind (see ``_refused_function``).
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "getenv",
        "getvariable",
        "current_query",
        "current_query_id",
        "current_connection_id",
        "current_transaction_id",
        "current_database",
        "current_catalog",
        "current_schema",
        "current_schemas",
        "current_user",
        "current_role",
        "sleep_ms",
        "pg_sleep",
        "version",
        "txid_current",
    }
)
DENIED_PREFIXES = ("duckdb_", "pragma_", "read_", "pg_", "sqlite_", "parquet_", "glob")


class RuleError(ValueError):
    """A rule expression that cannot be used; the message is one line."""


def condition_columns(spec: DomainSpec) -> dict[str, str]:
    """Matrix dimension -> its column name in rule expressions (plus ``complexity``)."""
    names = [*spec.matrix.dimensions, "complexity"]
    return {name: (f"condition_{name}" if name in spec.fields else name) for name in names}


def rule_schema(spec: DomainSpec) -> pa.Schema:
    """The columns a rule expression can use: the example's typed columns (as in Parquet), then
    the matrix conditions."""
    conditions = [pa.field(column, pa.string()) for column in condition_columns(spec).values()]
    return pa.schema([pa.field(ROW_COLUMN, pa.int64()), *example_arrow_schema(spec), *conditions])


def _connect() -> duckdb.DuckDBPyConnection:
    import duckdb

    # A spec is data, not code: its SQL may compute, never read files or the network, and never
    # change these limits (the configuration is locked).
    return duckdb.connect(
        config={
            "enable_external_access": False,
            "threads": 1,
            "memory_limit": RULE_MEMORY_LIMIT,
            "lock_configuration": True,
        }
    )


class RuleTimeout(Exception):
    """A rule query that did not finish within ``RULE_TIME_LIMIT_S``."""


class _Sandbox:
    """One limited connection whose queries run on a worker thread that the caller waits for at most
    ``RULE_TIME_LIMIT_S``: then the query is interrupted, and the caller gets :class:`RuleTimeout`
    at once. DuckDB notices an interrupt between vector chunks; a constant it folds in one piece
    (bounded by the memory limit) may run on in the abandoned thread, but nobody waits for it."""

    def __init__(self) -> None:
        self.conn = _connect()
        self.abandoned = False

    def __enter__(self) -> _Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.abandoned:  # never close a connection a worker still runs on
            self.conn.close()

    def register(self, name: str, table: pa.Table) -> None:
        self.conn.register(name, table)

    def query(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        if self.abandoned:
            raise RuleTimeout
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["rows"] = self.conn.execute(sql, params or []).fetchall()
            except BaseException as e:  # handed to the caller below
                box["error"] = e

        worker = threading.Thread(target=work, daemon=True, name="synth-rule")
        worker.start()
        worker.join(RULE_TIME_LIMIT_S)
        if worker.is_alive():
            self.conn.interrupt()
            worker.join(0.5)
            if worker.is_alive():
                self.abandoned = True
            raise RuleTimeout
        error = box.get("error")
        if error is not None:
            import duckdb

            if isinstance(error, duckdb.InterruptException):
                raise RuleTimeout from None
            raise error
        return list(box["rows"])


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@functools.cache
def _function_kinds() -> dict[str, frozenset[str]]:
    conn = _connect()
    try:
        rows = conn.execute("SELECT function_name, function_type FROM duckdb_functions()").fetchall()
    finally:
        conn.close()
    kinds: dict[str, set[str]] = {}
    for name, kind in rows:
        kinds.setdefault(str(name).lower(), set()).add(str(kind))
    return {name: frozenset(k) for name, k in kinds.items()}


def _refused_function(name: str) -> str | None:
    """Why a rule may not call ``name``, or None when it may."""
    lowered = name.lower()
    if lowered in DENIED_FUNCTIONS or lowered.startswith(DENIED_PREFIXES):
        return (
            f"function {name}() is not allowed in a rule (it reads settings, the system or files, or waits)"
        )
    kinds = _function_kinds().get(lowered, frozenset())
    if kinds and not kinds & {"scalar", "macro"}:
        kind = (
            "an aggregate"
            if "aggregate" in kinds
            else "a table"
            if kinds & {"table", "table_macro"}
            else ("a pragma")
        )
        return f"{name}() is {kind} function; a rule judges one row with scalar functions"
    return None


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# Clauses a bare ``SELECT <expression>`` leaves empty: any of them set means the text was more than
# one expression (``x WHERE false``, ``x FROM t``, ``x LIMIT 0``).
_EMPTY_CLAUSES = ("where_clause", "having", "qualify", "sample")
_EMPTY_LISTS = ("group_expressions", "group_sets", "modifiers")


@functools.lru_cache(maxsize=4096)
def compile_expression(text: str) -> str:
    """``text`` as one scalar DuckDB expression, re-rendered from its parse tree (comments and
    formatting dropped, parenthesized), or :class:`RuleError` saying in one line why not."""
    if "\x00" in text:
        raise RuleError("the expression contains a NUL character")
    import duckdb

    conn = _connect()
    try:
        if len(duckdb.extract_statements(f"SELECT {text}")) != 1:
            raise RuleError("one expression, no ';'")
        serialized = conn.execute("SELECT json_serialize_sql(?)", [f"SELECT {text}"]).fetchone()
        payload = str(serialized[0]) if serialized else '{"error": true}'
        tree = json.loads(payload)
        if tree.get("error"):
            raise RuleError(f"not a DuckDB expression: {tree.get('error_message', 'parse error')}")
        statements = tree.get("statements") or []
        if len(statements) != 1:
            raise RuleError("one expression, no ';'")
        node = statements[0].get("node") or {}
        if node.get("type") != "SELECT_NODE" or len(node.get("select_list") or []) != 1:
            raise RuleError("one expression only (no top-level commas, UNION or the like)")
        if (node.get("from_table") or {}).get("type") != "EMPTY":
            raise RuleError("an expression, not a query: no FROM")
        if any(node.get(c) is not None for c in _EMPTY_CLAUSES) or any(node.get(c) for c in _EMPTY_LISTS):
            raise RuleError("an expression, not a query: no WHERE, GROUP BY, HAVING, ORDER BY or LIMIT")
        if (node.get("cte_map") or {}).get("map"):
            raise RuleError("an expression, not a query: no WITH")
        expression = node["select_list"][0]
        if expression.get("alias"):
            raise RuleError("no alias (AS ...) in a rule")
        for part in _walk(expression):
            kind = part.get("class")
            if kind == "SUBQUERY" or part.get("type") == "SUBQUERY":
                raise RuleError("no subqueries: a rule judges one row")
            if kind == "WINDOW":
                raise RuleError("no window functions: a rule judges one row")
            if kind == "FUNCTION":
                why = _refused_function(str(part.get("function_name", "")))
                if why is None and (part.get("schema") or part.get("catalog")):
                    why = "functions are called by their bare name (no schema or catalog)"
                if why:
                    raise RuleError(why)
        rendered = conn.execute("SELECT json_deserialize_sql(?)", [payload]).fetchone()
    except RuleError:
        raise
    except Exception as e:  # the parser's own failure on hostile text is still a refused rule
        raise RuleError(f"not a DuckDB expression: {_first_line(e)}") from None
    finally:
        conn.close()
    sql = str(rendered[0]) if rendered else ""
    if not sql.startswith("SELECT "):
        raise RuleError("not a DuckDB expression")
    return f"({sql.removeprefix('SELECT ')})"


def rule_sql(rule: RuleSpec) -> str:
    """True when the row passes: ``when`` does not hold, or ``check`` is true. Built from the
    compiled (re-rendered) expressions only, never from the text as written."""
    check = f"coalesce(CAST({compile_expression(rule.check)} AS BOOLEAN), false)"
    if rule.when is None:
        return check
    when = compile_expression(rule.when)
    return f"(CASE WHEN coalesce(CAST({when} AS BOOLEAN), false) THEN {check} ELSE true END)"


def _sample_value(field: FieldSpec, k: int) -> Any:
    """A value the field's schema allows (the ``k``-th of a few), for trying rules before any model
    is called; None where the schema's pattern cannot be sampled without guessing."""
    if field.enum:
        return field.enum[k % len(field.enum)]
    if field.type == "string":
        if field.pattern:
            return None
        words = ["sample text", "another value", "x"][k % 3]
        shortest, longest = field.min_length or 0, field.max_length or 200
        return (words * (1 + shortest // len(words)))[: max(shortest, min(longest, len(words)))]
    if field.type in ("number", "integer"):
        bottom = (
            float(field.min)
            if field.min is not None
            else (float(field.max) - 10 if field.max is not None else 0.0)
        )
        top = float(field.max) if field.max is not None else bottom + 10
        value = [bottom, top, (bottom + top) / 2][k % 3]
        if field.type == "integer":
            return min(max(math.ceil(bottom), round(value)), math.floor(top))
        return value
    if field.type == "boolean":
        return k % 2 == 0
    if field.type == "array" and field.items is not None:
        count = max(1, field.min_items or 0)
        if field.max_items is not None:
            count = min(count, field.max_items)
        return [_sample_value(field.items, k + j) for j in range(count)]
    if field.type == "object" and field.properties:
        return {name: _sample_value(sub, k) for name, sub in field.properties.items()}
    return None


def sample_rows(spec: DomainSpec, count: int = 4) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """A few (example, conditions) pairs the spec's schema and matrix allow, the first all empty:
    what ``rule_problems`` runs every rule on."""
    examples: list[dict[str, Any]] = [{}]
    conditions: list[dict[str, str]] = [{}]
    levels = list(spec.matrix.complexity) or ["medium"]
    for k in range(count - 1):
        examples.append({name: _sample_value(field, k) for name, field in spec.fields.items()})
        cell = {dim: values[k % len(values)] for dim, values in spec.matrix.dimensions.items()}
        cell["complexity"] = levels[k % len(levels)]
        conditions.append(cell)
    return examples, conditions


def rule_problems(spec: DomainSpec) -> list[tuple[str, str]]:
    """Every rule that cannot be used, as (location, one-line message): text that is not one
    allowed scalar expression, SQL that does not bind to the spec's columns, or a rule that errors
    on sample rows the spec's own schema allows."""
    if not spec.rules:
        return []
    import duckdb

    problems: list[tuple[str, str]] = []
    usable = []
    columns = ", ".join(rule_schema(spec).names[1:])
    for i, rule in enumerate(spec.rules):
        bad = False
        for part in ("when", "check"):
            text = getattr(rule, part)
            if text is None:
                continue
            try:
                compile_expression(text)
            except RuleError as e:
                problems.append((f"rules.{i}.{part}", f"rule {rule.name!r}: {e} (columns: {columns})"))
                bad = True
        if not bad:
            usable.append((i, rule))
    if not usable:
        return problems
    bound = []
    with _Sandbox() as box:
        box.register("examples", rule_schema(spec).empty_table())
        for i, rule in usable:
            try:
                box.query(f"SELECT {rule_sql(rule)} FROM examples LIMIT 0")
                bound.append((i, rule))
            except RuleTimeout:
                # DuckDB folds constant parts while planning, so a heavy constant costs time here.
                problems.append(
                    (f"rules.{i}", f"rule {rule.name!r} did not finish within {RULE_TIME_LIMIT_S:g}s")
                )
            except duckdb.Error as e:
                problems.append(
                    (f"rules.{i}", f"rule {rule.name!r} is not a valid DuckDB boolean expression: "
                     f"{_first_line(e)} (columns: {columns})")
                )  # fmt: skip
    if bound:
        examples, conditions = sample_rows(spec)
        try:
            table = _rule_table(spec, examples, conditions)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return problems  # an enum value that does not fit its column: the schema reports that
        for i, rule in bound:
            errors = _evaluate(rule, table)
            failing = [(row, e) for row, e in enumerate(errors) if isinstance(e, str)]
            if failing:
                row, message = failing[0]
                problems.append(
                    (f"rules.{i}", f"rule {rule.name!r} errors on a sample row the schema allows "
                     f"(row {row}): {message}; guard it (e.g. TRY_CAST, a CASE) so it can judge any row")
                )  # fmt: skip
    return problems


def _rule_table(
    spec: DomainSpec, examples: list[dict[str, Any]], conditions: list[dict[str, str]]
) -> pa.Table:
    columns = condition_columns(spec)
    rows = []
    for i, (example, condition) in enumerate(zip(examples, conditions, strict=True)):
        row: dict[str, Any] = {ROW_COLUMN: i}
        for name in spec.fields:
            row[name] = example.get(name)
        for dimension, column in columns.items():
            row[column] = condition.get(dimension)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=rule_schema(spec))


def _evaluate(rule: RuleSpec, table: pa.Table) -> list[bool | str]:
    """One rule over every row: True (passes), False (fails) or the error message for that row.
    Vectorized when the rule runs cleanly; row by row only to find which rows an error comes from."""
    import duckdb

    timeout = f"rule {rule.name!r} did not finish within {RULE_TIME_LIMIT_S:g}s"
    sql = f"SELECT {ROW_COLUMN}, {rule_sql(rule)} FROM examples"
    with _Sandbox() as box:
        box.register("examples", table)
        try:
            rows = box.query(f"{sql} ORDER BY {ROW_COLUMN}")
            return [bool(ok) for _, ok in rows]
        except RuleTimeout:
            return [timeout] * table.num_rows
        except duckdb.Error:
            pass
    outcome: list[bool | str] = []
    with _Sandbox() as box:
        box.register("examples", table)
        for i in range(table.num_rows):
            try:
                found = box.query(f"{sql} WHERE {ROW_COLUMN} = ?", [i])
                outcome.append(bool(found[0][1]) if found else False)
            except RuleTimeout:
                outcome.append(timeout)
                if box.abandoned:  # the connection is still busy: the rest cannot be judged
                    outcome += [timeout] * (table.num_rows - len(outcome))
                    break
            except duckdb.Error as e:
                outcome.append(f"rule {rule.name!r} errors on this row: {_first_line(e)}")
    return outcome


def failed_rules(
    spec: DomainSpec, examples: list[dict[str, Any]], conditions: list[dict[str, str]]
) -> list[list[str]]:
    """For each example (with its matrix conditions), the messages of the rules it fails, in one
    vectorized query; a rule that errors on a row fails that row with the error as its message."""
    if not spec.rules or not examples:
        return [[] for _ in examples]
    import duckdb

    table = _rule_table(spec, examples, conditions)
    messages = [rule.message or f"fails rule {rule.name}: {rule.check}" for rule in spec.rules]
    try:
        with _Sandbox() as box:
            box.register("examples", table)
            passes = ", ".join(f"{rule_sql(rule)} AS r{k}" for k, rule in enumerate(spec.rules))
            result = box.query(f"SELECT {ROW_COLUMN}, {passes} FROM examples ORDER BY {ROW_COLUMN}")
        return [[messages[k] for k, ok in enumerate(row[1:]) if not ok] for row in result]
    except (duckdb.Error, RuleError, RuleTimeout):
        pass  # some rule errors (or is slow) on some row: find which, rule by rule
    found: list[list[str]] = [[] for _ in examples]
    for k, rule in enumerate(spec.rules):
        try:
            outcome = _evaluate(rule, table)
        except RuleError as e:
            outcome = [f"rule {rule.name!r} cannot run: {e}"] * len(examples)
        for i, ok in enumerate(outcome):
            if ok is not True:
                found[i].append(messages[k] if ok is False else str(ok))
    return found


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
    try:
        for k, rule in enumerate(spec.rules):
            applies = (
                "true"
                if rule.when is None
                else f"coalesce(CAST({compile_expression(rule.when)} AS BOOLEAN), false)"
            )
            parts.append(f"{applies} AS w{k}, CAST({compile_expression(rule.check)} AS BOOLEAN) AS c{k}")
    except RuleError:
        return {}  # rule_problems reports it; generation is not the place to fail on it
    try:
        with _Sandbox() as box:
            box.register("probes", table)
            result = box.query(f"SELECT {ROW_COLUMN}, {', '.join(parts)} FROM probes ORDER BY {ROW_COLUMN}")
    except (duckdb.Error, RuleTimeout):
        return {}  # a rule that errors on a probe narrows nothing; validation rejects such rows
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
