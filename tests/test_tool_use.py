"""Executed tool-call traces (issue 27, part 3): tools declared in a spec run for real in a limited
subprocess; traces whose calls fail their schema or their execution are rejected with the reason;
the export is the OpenAI chat format with ``tool_calls`` and ``tool`` messages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from synth_pipelines.spec.loading import load_spec
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.tooluse.sandbox import run_tool
from synth_pipelines.tooluse.tools import ToolError, ToolSet

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "tool_use_shop"


def _shop_module() -> Any:
    spec = importlib.util.spec_from_file_location("shop_tools", REPO / "schemas" / "tools" / "shop_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec(schemas: Path = REPO / "schemas") -> DomainSpec:
    return load_spec(schemas / f"{DOMAIN}.yaml").spec


def test_a_recorded_result_equals_a_real_execution_of_the_tool() -> None:
    tools, shop = ToolSet(_spec(), REPO / "schemas"), _shop_module()
    query = "select c.name, sum(p.price * o.quantity) from orders o join customers c on c.id = o.customer_id join products p on p.id = o.product_id group by c.name order by 2 desc"  # noqa: E501
    call = tools.call("sql_query", json.dumps({"query": query}))
    assert call.error is None and json.loads(call.result or "") == shop.sql_query(query)
    assert json.loads(call.result or "")["rows"][0] == ["Dana Kowalski", 358.0]  # 2 x 54.50 + 249
    sums = tools.call("calculator", json.dumps({"expression": "(89.9 + 129) * 2"}))
    assert float(sums.result or "nan") == shop.calculator("(89.9 + 129) * 2") == 437.8


def test_bad_arguments_are_refused_before_anything_runs_and_failures_say_why() -> None:
    tools = ToolSet(_spec(), REPO / "schemas")
    missing = tools.call("calculator", json.dumps({"expr": "1+1"}))
    assert missing.kind == "schema" and "'expression' is a required property" in (missing.error or "")
    assert tools.call("calculator", "not json").kind == "schema"
    assert tools.call("rm_rf", "{}").kind == "schema"
    long = tools.call("sql_query", json.dumps({"query": "select 1" + " " * 300}))
    assert long.kind == "schema" and "too long" in (long.error or "")
    write = tools.call("sql_query", json.dumps({"query": "delete from orders"}))
    assert write.kind == "execution" and "not authorized" in (write.error or "")
    wrong = tools.call("sql_query", json.dumps({"query": "select * from nowhere"}))
    assert wrong.kind == "execution" and "no such table" in (wrong.error or "")


def test_the_sandbox_stops_a_runaway_a_memory_hog_and_ignores_what_a_tool_prints(tmp_path: Path) -> None:
    tool = tmp_path / "tools.py"
    tool.write_text(
        "def spin():\n    while True:\n        pass\n"
        "def hog():\n    return len(bytearray(1 << 30))\n"
        'def chatty(x):\n    print(\'{"ok": true, "result": 1}\')\n    return x * 2\n'
        "def writes():\n    with open('out.txt', 'w') as f:\n        f.write('x' * 10)\n"
        "    return 'written'\n"
    )
    spin = run_tool(tool, "spin", {}, timeout_s=1, memory_mb=128)
    assert not spin.ok and "timed out after 1 s" in (spin.error or "")
    hog = run_tool(tool, "hog", {}, timeout_s=5, memory_mb=128)
    assert not hog.ok and "memory" in (hog.error or "").lower()
    chatty = run_tool(tool, "chatty", {"x": 21}, timeout_s=5, memory_mb=128)
    assert chatty.ok and chatty.result == 42
    writes = run_tool(tool, "writes", {}, timeout_s=5, memory_mb=128)
    long = run_tool(tool, "chatty", {"x": "y" * 2500}, timeout_s=5, memory_mb=128).within_limit()
    assert not long.ok and "5,000 characters, over the 4,000" in (long.error or "")  # never cut
    out = tmp_path / "out.txt"
    assert not writes.ok and (not out.exists() or out.stat().st_size == 0)  # no byte written


def test_a_tool_file_outside_the_specs_folder_is_refused(tmp_path: Path) -> None:
    import shutil

    specs = tmp_path / "specs"
    shutil.copytree(REPO / "schemas", specs)
    (tmp_path / "evil.py").write_text("def sql_query(query):\n    return 'outside'\n")
    (specs / "tools" / "shop_tools.py").unlink()
    (specs / "tools" / "shop_tools.py").symlink_to(tmp_path / "evil.py")
    with pytest.raises(ToolError, match="leaves the specs folder"):
        ToolSet(_spec(specs), specs)
    with pytest.raises(ValueError, match="inside the specs folder"):
        raw = (specs / f"{DOMAIN}.yaml").read_text().replace("tools/shop_tools.py", "../evil.py")
        (specs / f"{DOMAIN}.yaml").write_text(raw)
        _spec(specs)


# ---- the pipeline on a scripted generator -----------------------------------------------------

GOOD = {
    "request": "What do the gear products under 30 cost, and twice that?",
    "tool_calls": [
        {
            "name": "sql_query",
            "arguments": {"query": "select name, price from products where price < 30"},
        },
        {"name": "calculator", "arguments": {"expression": "27.75 * 2"}},
    ],
}
BAD_ARGUMENTS = {
    "request": "How much is two plus two, please?",
    "tool_calls": [{"name": "calculator", "arguments": {"formula": "2+2"}}],
}
FAILS = {
    "request": "List every row of the suppliers table.",
    "tool_calls": [{"name": "sql_query", "arguments": {"query": "select * from suppliers"}}],
}


def _scripted_generator(request: Any, call_no: int) -> str | None:
    properties = (request.json_schema or {}).get("properties", {})
    if "tool_calls" in properties:  # the plan: by the problem's seed, one of three plans
        plans = [GOOD, GOOD, BAD_ARGUMENTS, FAILS]
        return json.dumps(plans[(request.seed or 0) % 4])
    if set(properties) == {"answer"}:
        results = request.messages[-1].content
        return json.dumps({"answer": f"From the tools: {results.splitlines()[1][:200]}"})
    return None


def test_the_pipeline_records_real_results_rejects_failed_traces_and_exports_openai_tool_calls(
    tmp_path: Path, scripted_schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synth_pipelines.exports.training import build_export
    from synth_pipelines.llm import factory
    from synth_pipelines.warehouse.storage import Warehouse
    from tests.materialize import materialize_domain, up_to
    from tests.scripted import ScriptedBackend

    made: dict[str, ScriptedBackend] = {}

    def backend_for(name: str, config: Any, api_key: str | None = None) -> ScriptedBackend:
        if name not in made:
            judge = name != "smollm2-135m"
            made[name] = ScriptedBackend(
                name, None if judge else _scripted_generator, judge_score=5 if judge else None
            )
        return made[name]

    monkeypatch.setattr(factory, "backend_for", backend_for)
    warehouse = tmp_path / "wh"
    result = materialize_domain(
        up_to("validated_examples"), warehouse, scripted_schemas_dir, domain=DOMAIN, target=12
    )
    assert result.success
    raw = duckdb.sql(
        "select status, failure_kind, error, example_json from "
        f"read_parquet('{warehouse}/raw_generations/*/*.parquet')"
    ).fetchall()
    kinds = {r[1] for r in raw if r[0] == "failed"}
    ok = [json.loads(r[3]) for r in raw if r[0] == "ok"]
    assert ok and kinds <= {"tool_schema", "tool_execution"} and kinds, raw
    shop = _shop_module()
    for trace in ok:  # every recorded result is what the tool really returns for those arguments
        for call in trace["tool_calls"]:
            arguments = json.loads(call["arguments"])
            real = getattr(shop, call["name"])(**arguments)
            assert json.loads(call["result"]) == json.loads(json.dumps(real))
    reasons = {r[1]: r[2] for r in raw if r[0] == "failed"}
    assert set(reasons) == {"tool_schema", "tool_execution"}  # the plans' seeds hit all three kinds
    assert (
        "(calculator) refused" in reasons["tool_schema"]
        and "'formula' was unexpected" in reasons["tool_schema"]
    )
    assert (
        "(sql_query) failed" in reasons["tool_execution"]
        and "no such table: suppliers" in reasons["tool_execution"]
    )

    rejected_after_generation = duckdb.sql(
        f"select fail_stage, fail_reasons from read_parquet('{warehouse}/rejected_examples/*/*.parquet') "
        "where fail_stage != 'generation'"
    ).fetchall()
    validated = duckdb.sql(f"select count(*) from read_parquet('{warehouse}/validated_examples/*/*.parquet')")
    assert validated.fetchall()[0][0] >= 1, rejected_after_generation  # complete traces pass

    wh = Warehouse(str(warehouse))
    spec = wh.materialized_spec(DOMAIN)
    assert spec is not None
    export = build_export(wh, spec, "sft", tmp_path / "out")
    rows = [json.loads(line) for line in Path(export.jsonl).read_text().splitlines()]
    assert rows and {t["function"]["name"] for t in rows[0]["tools"]} == {"sql_query", "calculator"}
    messages = rows[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    call_ids = [c["id"] for c in messages[2]["tool_calls"]]
    assert [m["tool_call_id"] for m in messages[3:5]] == call_ids
    assert json.loads(messages[3]["content"])["rows"] == [["Water Filter Bottle", 27.75]]
    assert float(messages[4]["content"]) == 55.5


def test_tools_imported_from_this_projects_mcp_server_are_called_for_real(
    tmp_path: Path, schemas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/list of `synth mcp` gives spec declarations; a trace's call is a real tools/call."""
    import yaml

    from synth_pipelines.spec.loading import discover_specs
    from synth_pipelines.spec.model import McpToolSource
    from synth_pipelines.tooluse.mcp_tools import list_tools

    for path in schemas_dir.glob("*.yaml"):  # two domains: synth_list_domains' reply stays short
        if path.stem not in (DOMAIN, "api_development"):
            path.unlink()
    monkeypatch.setenv("SYNTH_SCHEMAS", str(schemas_dir))
    monkeypatch.setenv("SYNTH_WAREHOUSE", str(tmp_path / "wh"))
    imported = list_tools(McpToolSource(server="synth"), schemas_dir)
    names = {e["name"] for e in imported}
    assert {"synth_list_domains", "synth_status", "synth_search"} <= names
    data = yaml.safe_load((schemas_dir / f"{DOMAIN}.yaml").read_text())
    data["tools"] = [e for e in imported if e["name"] in ("synth_list_domains", "synth_status")]
    (schemas_dir / f"{DOMAIN}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    tools = ToolSet(_spec(schemas_dir), schemas_dir)  # the declarations are a valid spec as-is
    listed = tools.call("synth_list_domains", "{}")
    assert listed.error is None
    assert {d["domain"] for d in json.loads(listed.result or "")["domains"]} == set(
        discover_specs(schemas_dir)
    )
    refused = tools.call("synth_status", json.dumps({"domain": 7}))
    assert refused.kind == "schema"  # checked against the server's own input schema, before calling
    unknown = tools.call("synth_status", json.dumps({"domain": "no_such_domain"}))
    assert unknown.kind == "execution" and "no_such_domain" in (unknown.error or "")
    with pytest.raises(ValueError, match="inside the specs folder"):
        McpToolSource(server="../elsewhere.py")
