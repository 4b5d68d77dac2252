"""Broad tests that must find nothing (issue 21): the REST API fuzzed from its own OpenAPI document with
schemathesis, and spec rules fuzzed with hypothesis from DuckDB's function list and SQL fragments.

Both are bounded so the suite stays fast: ``FUZZ_EXAMPLES`` examples per API operation (with and
without the token), ``RULE_EXAMPLES`` rule expressions. ``SYNTH_FUZZ_SCALE`` multiplies both for a
longer run by hand.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from synth_pipelines.service.api import create_app
from synth_pipelines.service.operations import ServiceSettings, SynthService

REPO = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-token"
SCALE = max(1, int(os.environ.get("SYNTH_FUZZ_SCALE", "1")))
FUZZ_EXAMPLES = 25 * SCALE
RULE_EXAMPLES = 120 * SCALE


def _fuzz_app() -> Any:
    """The API over a scratch warehouse and a copy of the shipped specs, with a token. Launching a run
    is replaced by a refusal: a fuzzer that guessed a domain name must not start real model runs."""
    import dagster as dg

    from synth_pipelines.service.operations import Unavailable

    root = Path(tempfile.mkdtemp(prefix="synth-fuzz-"))
    shutil.copytree(REPO / "schemas", root / "schemas")

    class NoLaunch(SynthService):
        def _launch_on_instance(self, *args: Any, **kwargs: Any) -> str:
            raise Unavailable("launching is off in the fuzz test")

    settings_ = ServiceSettings(
        warehouse_root=str(root / "warehouse"),
        state_dir=None,
        schemas_dir=str(root / "schemas"),
        profile="local",
    )
    service = NoLaunch(settings_, instance=dg.DagsterInstance.ephemeral())
    # schemathesis's ASGI transport sends Host: testserver (Starlette's test client).
    return create_app(service, host="127.0.0.1", token=TOKEN, allowed_hosts=["testserver", "127.0.0.1"])


APP = _fuzz_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SENT: Counter[str] = Counter()


@SCHEMA.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_fuzz_finds_no_server_error_and_no_undocumented_response(case: Any) -> None:
    """Every operation, with and without the token: no 5xx, and every response matches the documented
    status codes, content types and schemas (errors included: ``{"error": {"message", "field"}}``).
    ``positive_data_acceptance`` is left out: schema-valid input still names domains that do not
    exist, and the documented answer to those is a 404."""
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
        response = case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
        SENT[f"{case.method} {case.path}"] += 1
        if not headers and case.path.startswith("/v1/"):
            assert response.status_code in (401, 404, 405, 413, 422), response.text
        if 400 <= response.status_code < 500:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"message", "field"}, body


def test_api_fuzz_report() -> None:
    """How many requests the fuzz test above sent (it runs first in this module)."""
    total = sum(SENT.values())
    print(f"\napi fuzz: {total} requests over {len(SENT)} operations: {dict(SENT)}")
    if SENT:  # run alone (-k) this test has nothing to report
        assert total >= 2 * len(SENT)


# ----------------------------------------------------------------------------- rule fuzzing
def _functions() -> list[str]:
    import duckdb

    conn = duckdb.connect()
    try:
        rows = conn.execute("SELECT DISTINCT function_name FROM duckdb_functions() ORDER BY 1").fetchall()
    finally:
        conn.close()
    return [str(r[0]) for r in rows if str(r[0]).isidentifier()]


FUNCTIONS = _functions()
COLUMNS = ["task", "method", "endpoint", "explanation", "auth", "operation", "complexity"]
LITERALS = [
    "1",
    "0",
    "-1",
    "'x'",
    "'GET'",
    "NULL",
    "true",
    "false",
    "1e308",
    "'2026-01-01'",
    "[1, 2]",
    "{'a': 1}",
]
FRAGMENTS = [
    "--",
    "/*",
    "*/",
    ";",
    "(",
    ")",
    ",",
    "'",
    "SELECT 1",
    "FROM range(10)",
    "WHERE false",
    "UNION SELECT 1",
    "OVER ()",
    "AS x",
    "LIMIT 0",
    "'/etc/passwd'",
    "'http://127.0.0.1:1/x'",
    "ATTACH 'x.db'",
    "PRAGMA version",
    "SET threads=8",
    "COPY examples TO 'out.csv'",
    "range(100000000)",
]
OPERATORS = [
    "=",
    "<>",
    "<",
    ">=",
    "AND",
    "OR",
    "||",
    "+",
    "*",
    "/",
    "LIKE",
    "IS",
    "IN",
    "::INTEGER",
    "::VARCHAR",
]

atoms = st.one_of(st.sampled_from(COLUMNS), st.sampled_from(LITERALS))


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    """Random expression-shaped text: function calls from DuckDB's own list over columns and
    literals, joined by operators, with SQL fragments spliced in anywhere."""
    kind = draw(st.integers(0, 4 if depth < 3 else 1))
    if kind == 0:
        text = draw(atoms)
    elif kind == 1:
        text = draw(st.sampled_from(FRAGMENTS))
    elif kind == 2:
        name = draw(st.sampled_from(FUNCTIONS))
        args = draw(st.lists(expressions(depth + 1), max_size=3))
        text = f"{name}({', '.join(args)})"
    elif kind == 3:
        left, right = draw(expressions(depth + 1)), draw(expressions(depth + 1))
        text = f"{left} {draw(st.sampled_from(OPERATORS))} {right}"
    else:
        text = f"({draw(expressions(depth + 1))})"
    return text


@pytest.fixture(scope="module")
def rule_sandbox() -> Any:
    """A folder the fuzzed rules must never write into, nor read from (it holds a secret)."""
    folder = Path(tempfile.mkdtemp(prefix="synth-rule-fuzz-"))
    (folder / "secret.txt").write_text("do not read")
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(before)


SPEC_DATA = yaml.safe_load((REPO / "schemas" / "api_development.yaml").read_text())


@settings(
    max_examples=RULE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(check=expressions(), when=st.none() | expressions())
def test_rule_fuzz_is_refused_in_one_line_or_runs_within_limits(
    rule_sandbox: Path, check: str, when: str | None
) -> None:
    """Each random rule is refused at load with a one-line message per problem, or loads and then
    runs on sample rows within its limits: no crash, no hang, no file written or read."""
    from synth_pipelines.spec.loading import parse_spec
    from synth_pipelines.spec.model import SpecError
    from synth_pipelines.spec.rules import RULE_TIME_LIMIT_S, failed_rules, sample_rows

    data = dict(SPEC_DATA)
    rule: dict[str, Any] = {"name": "fuzz", "check": check[:2000]}
    if when:
        rule["when"] = when[:2000]
    data["rules"] = [rule]
    started = time.monotonic()
    try:
        spec = parse_spec(data, path="fuzz.yaml")
    except SpecError as e:
        assert e.problems and all("\n" not in message for _, message in e.problems), e.problems
    else:
        examples, conditions = sample_rows(spec, count=6)
        verdicts = failed_rules(spec, examples, conditions)
        assert len(verdicts) == len(examples)
        assert all(all(isinstance(m, str) and "\n" not in m for m in v) for v in verdicts)
    # Load and run: a few queries each under the time limit.
    assert time.monotonic() - started < 6 * RULE_TIME_LIMIT_S
    assert sorted(p.name for p in rule_sandbox.iterdir()) == ["secret.txt"]
