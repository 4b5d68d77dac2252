"""Safe to expose (issue 21): the service, spec rules and the benchmark hold against hostile or careless
input. One test (or a few) per defect the review found; each fails on the code before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import yaml

from synth_pipelines.service.operations import ServiceSettings, SynthService
from synth_pipelines.spec.loading import load_spec, parse_spec
from synth_pipelines.spec.model import SpecError
from tests.conftest import served

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "schemas" / "api_development.yaml"
DOMAIN = "api_development"
TOKEN = "s3cret-token"
BOOM = "Make this request explode"


def _spec_with(rules: list[dict[str, Any]]) -> dict[str, Any]:
    data = yaml.safe_load(SHIPPED.read_text())
    data["rules"] = rules
    return data


def _example(task: str = "Remove a user account", method: str = "DELETE") -> dict[str, Any]:
    return {
        "task": task,
        "method": method,
        "endpoint": "/users/{id}",
        "explanation": "The call acts on the account resource named in the path.",
    }


# ------------------------------------------------------------------ 1. the benchmark never deletes
def test_benchmark_refuses_path_like_strategy_names(tmp_path: Path) -> None:
    from synth_pipelines.strategy_benchmark import BenchmarkError, load_strategies

    for name in ("../victim", "/tmp/victim", "a/b", "cache", "Upper", ""):
        file = tmp_path / "strategies.yaml"
        file.write_text(yaml.safe_dump({name: {"generator": "first"}}))
        with pytest.raises(BenchmarkError, match="is not allowed"):
            load_strategies([name], file)


def test_benchmark_empties_only_folders_it_marked_and_checks_all_strategies_first(
    tmp_path: Path, schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth_pipelines import strategy_benchmark
    from synth_pipelines.strategy_benchmark import BenchmarkError, Strategy, run_benchmark, scratch_folder

    workdir = tmp_path / "work"
    workdir.mkdir()
    victim = workdir / "mine"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    with pytest.raises(BenchmarkError, match="not made by synth benchmark"):
        scratch_folder(workdir, "mine")
    assert (victim / "precious.txt").read_text() == "keep me"
    # A folder the benchmark made (marker) is emptied on the next run.
    made = scratch_folder(workdir, "fresh")
    (made / "old-run.txt").write_text("stale")
    again = scratch_folder(workdir, "fresh")
    assert not (again / "old-run.txt").exists() and (again / strategy_benchmark.MARKER).is_file()
    # A symlink named like a strategy is never followed into its target.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("outside")
    (workdir / "linked").symlink_to(outside)
    with pytest.raises(BenchmarkError):
        scratch_folder(workdir, "linked")
    assert (outside / "data.txt").read_text() == "outside"

    # A typo in the third strategy stops the benchmark before the first one spends anything.
    ran: list[str] = []
    monkeypatch.setattr(strategy_benchmark, "run_strategy", lambda name, *a, **k: ran.append(name))
    strategies = {
        "one": Strategy(generator="first"),
        "two": Strategy(validators="first"),
        "three": Strategy(validators=["no-such-judge"]),
    }
    with pytest.raises(BenchmarkError, match=r"strategy 'three'.*no-such-judge"):
        run_benchmark(DOMAIN, strategies, count=2, schemas=schemas_dir, profile="local", workdir=workdir)
    bad_override = {"one": Strategy(), "two": Strategy(validation={"min_pass_rate": 7})}
    with pytest.raises(BenchmarkError, match=r"min_pass_rate.*strategy 'two'"):
        run_benchmark(DOMAIN, bad_override, count=2, schemas=schemas_dir, profile="local", workdir=workdir)
    assert ran == []


# ------------------------------------------------------------------ 2. rules
@pytest.mark.parametrize(
    ("check", "fragment"),
    [
        ("CAST(task AS INTEGER) > 0", "errors on a sample row"),
        ("error('boom') IS NULL", "errors on a sample row"),
        ("(SELECT count(*) FROM range(1000000000000)) > 0", "no subqueries"),
        ("current_setting('threads') = '1'", "current_setting() is not allowed"),
        ("getenv('HOME') <> ''", "getenv() is not allowed"),
        ("count(*) > 0", "aggregate function"),
        ("method = 'GET' WHERE false", "not a query"),
        ("method = 'GET', true", "one expression"),
        ("sleep_ms(100000) IS NULL", "not allowed"),
        ("sum(1) OVER () > 0", "no window functions"),
        ("EXISTS (SELECT 1)", "no subqueries"),
    ],
)
def test_rules_that_would_fail_hang_or_reach_out_are_refused_at_load(check: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec_with([{"name": "r", "check": check}]), path="schemas/api_development.yaml")
    problems = caught.value.problems
    assert len(problems) == 1 and problems[0][0].startswith("rules.0")
    assert fragment in problems[0][1] and "\n" not in problems[0][1]


def test_a_comment_cannot_reshape_the_rule_query() -> None:
    """Rules are re-rendered from DuckDB's parse tree: a trailing ``--`` comment is dropped instead
    of swallowing the rest of the query (it used to return nothing for the whole batch)."""
    from synth_pipelines.spec.rules import compile_expression, failed_rules

    assert compile_expression("method = 'DELETE' -- ) OR (true") == "((\"method\" = 'DELETE'))"
    spec = parse_spec(
        _spec_with(
            [{"name": "c", "when": "operation = 'delete' --", "check": "method = 'DELETE' /* x */ --"}]
        )
    )
    examples = [_example(method="DELETE"), _example(method="GET"), _example(method="GET")]
    conditions = [{"operation": "delete"}, {"operation": "delete"}, {"operation": "read"}]
    assert failed_rules(spec, examples, conditions) == [
        [],
        ["fails rule c: method = 'DELETE' /* x */ --"],
        [],
    ]


def test_a_rule_that_errors_on_one_row_rejects_that_row_only() -> None:
    """The rule passes its sample rows, then errors on a real row: that row fails with the rule's
    name and DuckDB's message; the others are judged as usual; nothing raises."""
    from synth_pipelines.spec.rules import failed_rules

    spec = parse_spec(
        _spec_with([
            {"name": "explodes", "check": "CASE WHEN task = 'boom' THEN error('bad row') ELSE true END"},
            {"name": "delete", "when": "operation = 'delete'", "check": "method = 'DELETE'"},
        ])
    )  # fmt: skip
    examples = [_example(), _example(task="boom"), _example(method="GET")]
    conditions = [{"operation": "delete"}] * 3
    found = failed_rules(spec, examples, conditions)
    assert found[0] == []
    assert (
        len(found[1]) == 1
        and "rule 'explodes' errors on this row" in found[1][0]
        and "bad row" in found[1][0]
    )
    assert found[2] == ["fails rule delete: method = 'DELETE'"]


def test_rules_run_under_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule too slow for its sample rows is refused at load; one that slips through (rows unlike the
    samples) is interrupted at run time and rejects the rows it could not judge."""
    from synth_pipelines.spec import rules
    from synth_pipelines.spec.model import RuleSpec
    from synth_pipelines.spec.rules import failed_rules

    slow = "list_sum(list_transform(range(30000000), lambda x: x % 7)) > 0"
    monkeypatch.setattr(rules, "RULE_TIME_LIMIT_S", 0.05)
    started = time.monotonic()
    with pytest.raises(SpecError, match=r"did not finish within 0\.05s"):
        parse_spec(_spec_with([{"name": "slow", "check": slow}]))
    spec = parse_spec(_spec_with([]))
    spec = spec.model_copy(update={"rules": [RuleSpec(name="slow", check=slow)]})
    found = failed_rules(spec, [_example(), _example()], [{"operation": "delete"}] * 2)
    assert time.monotonic() - started < 10
    assert found == [["rule 'slow' did not finish within 0.05s"]] * 2


def test_validation_rejects_an_erroring_row_at_stage_rules_through_the_service(
    tmp_path: Path, schemas_dir: Path
) -> None:
    data = yaml.safe_load((schemas_dir / f"{DOMAIN}.yaml").read_text())
    data["rules"] = [
        {"name": "explodes", "check": f"CASE WHEN task = '{BOOM}' THEN error('bad row') ELSE true END"}
    ]
    (schemas_dir / f"{DOMAIN}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    svc = _service(tmp_path, schemas_dir)
    report = svc.validate(DOMAIN, [_example(), _example(task=BOOM)], models=False)
    verdicts = report["rows"]
    assert verdicts[1]["stage"] == "rules" and "explodes" in " ".join(verdicts[1]["reasons"])
    assert verdicts[0]["stage"] != "rules"


# ------------------------------------------------------------------ 3, 11, 15, 16: the REST API
def _service(tmp_path: Path, schemas_dir: Path) -> SynthService:
    import dagster as dg

    settings = ServiceSettings(
        warehouse_root=str(tmp_path / "warehouse"),
        state_dir=None,
        schemas_dir=str(schemas_dir),
        profile="local",
    )
    return SynthService(settings, instance=dg.DagsterInstance.ephemeral())


@pytest.fixture
def open_api(tmp_path: Path, schemas_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API on loopback without a token, as `synth serve` starts by default."""
    from synth_pipelines.service.api import create_app

    monkeypatch.delenv("SYNTH_API_TOKEN", raising=False)
    monkeypatch.delenv("SYNTH_ALLOWED_HOSTS", raising=False)
    with served(create_app(_service(tmp_path, schemas_dir), host="127.0.0.1")) as url:
        yield url


@pytest.fixture
def token_api(tmp_path: Path, schemas_dir: Path) -> Iterator[str]:
    from synth_pipelines.service.api import create_app

    with served(create_app(_service(tmp_path, schemas_dir), host="127.0.0.1", token=TOKEN)) as url:
        yield url


def _is_error_shape(response: httpx.Response, status: int, field: str | type | None = type) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "field"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if field is not type:
        assert body["error"]["field"] == field, body
    return body["error"]


def test_dns_rebinding_a_foreign_host_header_is_refused(open_api: str) -> None:
    with httpx.Client(base_url=open_api, timeout=30) as client:
        assert client.get("/v1/domains").status_code == 200  # Host: 127.0.0.1:<port>
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert client.get("/v1/domains", headers={"Host": host}).status_code == 200
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""):
            error = _is_error_shape(client.get("/v1/domains", headers={"Host": host}), 400, "host")
            assert "not served here" in error["message"]
        launch = client.post(f"/v1/domains/{DOMAIN}/runs", json={}, headers={"Host": "evil.test"})
        assert launch.status_code == 400


def test_allowed_hosts_are_configurable(tmp_path: Path, schemas_dir: Path) -> None:
    from starlette.testclient import TestClient

    from synth_pipelines.service.api import create_app
    from synth_pipelines.service.guard import allowed_host_names

    app = create_app(_service(tmp_path, schemas_dir), allowed_hosts=["synth.internal"])
    client = TestClient(app, base_url="http://synth.internal")
    assert client.get("/health").status_code == 200
    assert TestClient(app, base_url="http://127.0.0.1").get("/health").status_code == 400
    assert allowed_host_names("0.0.0.0", TOKEN) == frozenset({"*"})  # a token protects a public bind
    assert allowed_host_names("127.0.0.1", None) == frozenset({"127.0.0.1", "localhost", "::1"})


def test_oversized_chunked_and_deeply_nested_bodies_get_documented_errors(open_api: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"domain": "api_development", "rows": [{"a": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    with httpx.Client(base_url=open_api, timeout=60) as client:
        # A generator body has no Content-Length: httpx sends it chunked.
        streamed = client.post("/v1/validate", content=chunks(), headers={"Content-Type": "application/json"})
        _is_error_shape(streamed, 413, "body")
        deep = b"[" * 100_000 + b"]" * 100_000
        nested = client.post("/v1/validate", content=deep, headers={"Content-Type": "application/json"})
        assert "nested deeper" in _is_error_shape(nested, 422, "body")["message"]
        # Deep but inside strings is not nesting.
        flat = json.dumps({"domain": DOMAIN, "rows": [{"task": "[" * 5000}], "models": False})
        assert (
            client.post(
                "/v1/validate", content=flat, headers={"Content-Type": "application/json"}
            ).status_code
            == 200
        )


def test_every_4xx_has_the_documented_shape(open_api: str) -> None:
    with httpx.Client(base_url=open_api, timeout=30) as client:
        malformed = client.post(
            "/v1/validate", content=b'{"domain": "api_dev', headers={"Content-Type": "application/json"}
        )
        error = _is_error_shape(malformed, 422, "body")
        assert "malformed JSON" in error["message"]
        garbage = client.post(
            "/v1/validate", content=os.urandom(2 * 1024 * 1024), headers={"Content-Type": "application/json"}
        )
        assert _is_error_shape(garbage, 422, "body")
        missing = client.get("/v1/no/such/path")
        assert "no such endpoint" in _is_error_shape(missing, 404, None)["message"]
        wrong_method = client.delete("/v1/domains")
        _is_error_shape(wrong_method, 405, None)
        outcomes = {"outcomes": [{"outcome_id": "o1", "domain": DOMAIN, "success": True}]}
        assert client.post("/v1/outcomes", json=outcomes).status_code == 200
        again = {
            "outcomes": [{"outcome_id": "o2", "domain": DOMAIN, "success": True}, outcomes["outcomes"][0]]
        }
        report = client.post("/v1/outcomes", json=again).json()
        assert report["accepted"] == 1 and report["rejected"][0]["position"] == 1
        only_dup = client.post("/v1/outcomes", json=outcomes)
        _is_error_shape(only_dup, 422, "outcomes.0")


def test_health_shows_paths_only_to_a_caller_the_api_serves(token_api: str, open_api: str) -> None:
    with httpx.Client(base_url=token_api, timeout=30) as client:
        anonymous = client.get("/health").json()
        assert anonymous == {"status": "ok", "auth": True}
        wrong = client.get("/health", headers={"Authorization": "Bearer nope"}).json()
        assert "warehouse" not in wrong
        known = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert known["warehouse"].endswith("warehouse") and "schemas" in known
    # A token-less server listens on loopback only and serves every local caller its /v1 API too.
    assert "warehouse" in httpx.get(f"{open_api}/health", timeout=30).json()


# ------------------------------------------------------------------ 9. validation of stream domains
def test_validating_rows_of_a_statistical_domain_is_a_4xx(tmp_path: Path, schemas_dir: Path) -> None:
    from starlette.testclient import TestClient

    from synth_pipelines.service.api import create_app
    from synth_pipelines.service.operations import ServiceError

    svc = _service(tmp_path, schemas_dir)
    with pytest.raises(ServiceError, match="applies to example domains"):
        svc.validate("service_traffic", [{"value": 1}], models=False)
    client = TestClient(create_app(svc), base_url="http://127.0.0.1")
    response = client.post(
        "/v1/validate", json={"domain": "payment_events", "rows": [{"x": 1}], "models": False}
    )
    assert "applies to example domains" in _is_error_shape(response, 400, "domain")["message"]


# ------------------------------------------------------------------ 4, 9, 16: MCP
def test_mcp_over_http_needs_a_token_off_loopback_and_checks_the_host(
    tmp_path: Path, schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth_pipelines.service.mcp_server import mcp_http_app
    from synth_pipelines.service.operations import ServiceError

    monkeypatch.delenv("SYNTH_API_TOKEN", raising=False)
    svc = _service(tmp_path, schemas_dir)
    with pytest.raises(ServiceError, match="SYNTH_API_TOKEN"):
        mcp_http_app(svc, host="0.0.0.0")
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for app_host, token in (("127.0.0.1", TOKEN), ("127.0.0.1", None)):
        app = mcp_http_app(svc, host=app_host, token=token)
        with served(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"} if token else {}
            if token:
                refused = client.post("/mcp", json=initialize, headers=headers)
                assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
            rebound = client.post("/mcp", json=initialize, headers={**headers, **auth, "Host": "evil.test"})
            assert rebound.status_code == 421
            foreign_page = client.post(
                "/mcp", json=initialize, headers={**headers, **auth, "Origin": "http://evil.test"}
            )
            assert foreign_page.status_code == 403
            ok = client.post("/mcp", json=initialize, headers={**headers, **auth})
            assert ok.status_code == 200, ok.text


def test_mcp_errors_are_one_readable_line(tmp_path: Path, schemas_dir: Path) -> None:
    import anyio
    from mcp import Client

    from synth_pipelines.service.mcp_server import build_mcp

    server = build_mcp(_service(tmp_path, schemas_dir))

    async def run() -> None:
        async with Client(server) as client:
            too_many = await client.call_tool(
                "synth_record_outcome",
                {"domain": DOMAIN, "success": True, "outcome_id": "x", "tags": [f"t{i}" for i in range(33)]},
            )
            text = too_many.content[0].text
            assert (
                too_many.is_error
                and "tags" in text
                and "errors.pydantic.dev" not in text
                and "\n" not in text
            )
            stream = await client.call_tool(
                "synth_validate", {"domain": "service_traffic", "rows": [{"v": 1}]}
            )
            assert stream.is_error and "applies to example domains" in stream.content[0].text
            future = await client.call_tool(
                "synth_record_outcome", {"domain": DOMAIN, "success": True, "outcome_id": "f"}
            )
            assert not future.is_error
            try:
                await client.read_resource("synth://domains/no_such_domain/card")
            except Exception as e:  # the SDK raises the server's error; its message must survive
                assert "no_such_domain" in str(e)
            else:
                raise AssertionError("reading a missing domain's card should fail")

    anyio.run(run)


# ------------------------------------------------------------------ 5. program.module stays inside
def test_program_module_is_confined_to_the_specs_folder(tmp_path: Path) -> None:
    from synth_pipelines.spec.model import ProgramSpec

    for module in ("../evil.py", "/tmp/evil.py", "sub/../../evil.py", "~/evil.py"):
        data = _spec_with([])
        data["program"] = {"module": module}
        with pytest.raises(SpecError, match="inside the specs folder"):
            parse_spec(data)
    specs = tmp_path / "schemas"
    (specs / "programs").mkdir(parents=True)
    outside = tmp_path / "evil.py"
    outside.write_text("raise SystemExit('ran')\n")
    (specs / "programs" / "link.py").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the specs folder"):
        ProgramSpec(module="programs/link.py").module_file(specs)
    assert (
        ProgramSpec(module="programs/mine.py").module_file(specs)
        == (specs / "programs" / "mine.py").resolve()
    )


def test_a_symlink_out_of_the_specs_folder_is_refused_by_every_file_a_spec_names(tmp_path: Path) -> None:
    """Program modules, tool modules, MCP server scripts and eval sets share one resolution: a
    relative path whose symlink points outside the folder is refused by each user."""
    from synth_pipelines.spec.model import EvalSetSpec, McpToolSource, ToolSpec, resolve_in_specs_folder
    from synth_pipelines.tooluse.mcp_tools import McpError, server_command
    from synth_pipelines.tooluse.tools import ToolError, tool_file
    from synth_pipelines.validation.decontamination import EvalSetError, eval_set_path

    specs = tmp_path / "schemas"
    specs.mkdir()
    outside = tmp_path / "evil.py"
    outside.write_text("raise SystemExit('ran')\n")
    (specs / "link.py").symlink_to(outside)
    (specs / "mine.py").write_text("x = 1\n")
    assert not resolve_in_specs_folder(specs, "link.py").inside
    assert resolve_in_specs_folder(specs, "mine.py").inside
    with pytest.raises(ToolError, match="leaves the specs folder"):
        tool_file(specs, ToolSpec(name="t", description="d", module="link.py", function="f"))
    with pytest.raises(McpError, match="inside the specs"):
        server_command(McpToolSource(server="link.py"), specs)
    with pytest.raises(EvalSetError, match="leaves the specs folder"):
        eval_set_path(specs, EvalSetSpec(name="e", path="link.py"))
    assert server_command(McpToolSource(server="mine.py"), specs)[1][-1] == str((specs / "mine.py").resolve())


# ------------------------------------------------------------------ 6. the ANN index and new vectors
def test_index_fingerprint_covers_the_vectors() -> None:
    from synth_pipelines.warehouse.ann import embeddings_fingerprint
    from synth_pipelines.warehouse.tables import EMBEDDING_DIM

    rng = np.random.default_rng(0)

    def table(vectors: np.ndarray) -> pa.Table:
        flat = pa.array(vectors.astype(np.float32).reshape(-1), pa.float32())
        return pa.table(
            {
                "example_id": ["e0", "e1"],
                "embedding": pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM),
                "embedding_model": ["m", "m"],
            }
        )

    old = rng.normal(size=(2, EMBEDDING_DIM))
    regenerated = old.copy()
    regenerated[1] = rng.normal(size=EMBEDDING_DIM)  # e1's content changed, its id did not
    assert embeddings_fingerprint(table(old)) == embeddings_fingerprint(table(old.copy()))
    assert embeddings_fingerprint(table(old)) != embeddings_fingerprint(table(regenerated))


# ------------------------------------------------------------------ 8. time zones
def test_statistical_timestamps_do_not_depend_on_the_machine_time_zone(tmp_path: Path) -> None:
    spec_yaml = tmp_path / "ts.yaml"
    spec_yaml.write_text("start: 2026-03-01T00:00:00\nfrequency: 1h\nlength: 24\nseries: 1\n")
    code = (
        "import sys, yaml; from synth_pipelines.spec.model import TimeseriesSpec, EventsSpec;"
        "from synth_pipelines.generation.simulate import generate_timeseries, generate_events;"
        "d = yaml.safe_load(open(sys.argv[1]));"
        "t = generate_timeseries(TimeseriesSpec.model_validate(d)).column('timestamp')[0].as_py();"
        "e = generate_events(EventsSpec.model_validate({'start': d['start'], 'duration': '1d'}));"
        "print(t.isoformat(), e.column('timestamp')[0].as_py().isoformat())"
    )
    seen = set()
    for tz in ("UTC", "America/New_York", "Asia/Kolkata"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(spec_yaml)],
            env={**os.environ, "TZ": tz},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        seen.add(out)
    assert len(seen) == 1 and next(iter(seen)).startswith("2026-03-01T00:00:00+00:00")


# ------------------------------------------------------------------ 10. outcomes from the future
def test_outcomes_dated_in_the_future_are_refused_naming_the_field(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from synth_pipelines.learning.outcomes import record_outcomes
    from synth_pipelines.warehouse.storage import Warehouse

    wh = Warehouse(tmp_path / "wh")
    now = datetime.now(UTC)
    report = record_outcomes(
        wh,
        [
            {"outcome_id": "a", "domain": DOMAIN, "success": True, "recorded_at": now + timedelta(days=30)},
            {"outcome_id": "b", "domain": DOMAIN, "success": True, "recorded_at": now + timedelta(minutes=1)},
            {"outcome_id": "c", "domain": DOMAIN, "success": False, "recorded_at": now - timedelta(days=1)},
        ],
    )
    assert report.accepted == 2
    assert [(r.position, r.reason.split(":")[0]) for r in report.rejected] == [(0, "recorded_at")]
    assert "in the future" in report.rejected[0].reason


# ------------------------------------------------------------------ 12. widened column types
def test_a_widened_column_type_keeps_the_dataset_readable(tmp_path: Path) -> None:
    from synth_pipelines.warehouse.storage import Warehouse

    wh = Warehouse(tmp_path / "wh")
    wh.append_dataset("llm_usage", DOMAIN, pa.table({"run_id": ["r1"], "cost": pa.array([3], pa.int64())}))
    wh.append_dataset(
        "llm_usage", DOMAIN, pa.table({"run_id": ["r2"], "cost": pa.array([0.25], pa.float64())})
    )
    table = wh.read_dataset("llm_usage", domain=DOMAIN)
    assert table is not None and table.schema.field("cost").type == pa.float64()
    assert sorted(table.column("cost").to_pylist()) == [0.25, 3.0]


# ------------------------------------------------------------------ 14. the suite's own instance
def test_the_suite_never_uses_the_users_instance_or_warehouse() -> None:
    home = Path(os.environ["DAGSTER_HOME"]).resolve()
    assert home != (REPO / ".dagster_home").resolve() and not home.is_relative_to(REPO)
    assert not Path(os.environ["SYNTH_WAREHOUSE"]).resolve().is_relative_to(REPO)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    try:
        assert Path(instance.root_directory).resolve() == home
    finally:
        instance.dispose()


def test_spec_validate_runs_rules_on_sample_rows_before_any_model_call(tmp_path: Path) -> None:
    """`synth schema validate` shows a rule's type error at once (it used to pass, then crash
    validated_examples after generation was paid for)."""
    data = _spec_with([{"name": "numeric_task", "check": "CAST(task AS INTEGER) > 0"}])
    path = tmp_path / f"{DOMAIN}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = subprocess.run(
        [sys.executable, "-m", "synth_pipelines.cli", "schema", "validate", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert out.returncode == 1
    assert "rules.0: rule 'numeric_task' errors on a sample row" in out.stderr and "TRY_CAST" in out.stderr
    good = _spec_with(yaml.safe_load(SHIPPED.read_text())["rules"])
    path.write_text(yaml.safe_dump(good, sort_keys=False))
    assert load_spec(path).spec.rules
