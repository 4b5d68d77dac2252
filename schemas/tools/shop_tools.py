"""The tools of tool_use_shop.yaml: SQL over a small shop's database, and a calculator.

Each call runs in a fresh, resource-limited subprocess (synth_pipelines/tooluse/sandbox.py), so
these functions keep no state between calls: the database is built in memory from shop.sql.
"""

from __future__ import annotations

import ast
import operator
import sqlite3
from pathlib import Path

MAX_ROWS = 20
_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def sql_query(query: str) -> dict:
    """Run one read-only SELECT; the columns and at most 20 rows."""
    conn = sqlite3.connect(":memory:")
    conn.executescript((Path(__file__).parent / "shop.sql").read_text())

    def read_only(action: int, *_: object) -> int:
        allowed = (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION)
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    conn.set_authorizer(read_only)
    cursor = conn.execute(query)
    columns = [d[0] for d in cursor.description or []]
    return {"columns": columns, "rows": [list(r) for r in cursor.fetchmany(MAX_ROWS)]}


def calculator(expression: str) -> float:
    """Evaluate arithmetic: numbers, + - * / // % ** and parentheses."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 64:
                raise ValueError("exponent above 64")
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    return round(value(ast.parse(expression, mode="eval")), 6)
