"""Tools served by an MCP server: ``tools/list`` to import their declarations into a spec, and a
real ``tools/call`` for every call a trace makes (the official ``mcp`` SDK's stdio client).

A server is this project's own ``synth mcp`` (``server: synth``, run with the same interpreter and
environment, so it sees the same warehouse) or a Python script inside the specs folder, run with
``python -I`` and an environment of ``PATH`` only. Each call starts the server, initializes, calls
and stops it: no state leaks from one trace into the next, and a hung server is cut off at the
tool's ``timeout_s``. Memory limits do not apply to an MCP server (it is not our child's code).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from synth_pipelines.spec.model import McpToolSource, resolve_in_specs_folder
from synth_pipelines.tooluse.sandbox import ToolRun


class McpError(ValueError):
    """An MCP tool source that cannot be used; the message names the server and the fix."""


def server_command(source: McpToolSource, specs_dir: Path | str) -> tuple[str, list[str], dict[str, str]]:
    """The command, arguments and environment that start ``source``'s server on stdio."""
    if source.server == "synth":
        return sys.executable, ["-m", "synth_pipelines.cli", "mcp", "--transport", "stdio"], dict(os.environ)
    root, script = resolved = resolve_in_specs_folder(specs_dir, source.server)
    if not resolved.inside or script.suffix != ".py" or not script.is_file():
        raise McpError(
            f"tools[].mcp.server {source.server!r} must be 'synth' or a Python file inside the specs "
            f"folder {root}"
        )
    return sys.executable, ["-I", str(script)], {"PATH": os.defpath}


async def _with_session(source: McpToolSource, specs_dir: Path | str, work: Any) -> Any:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    command, args, env = server_command(source, specs_dir)
    params = StdioServerParameters(command=command, args=args, env=env, cwd=str(Path(specs_dir).resolve()))
    with open(os.devnull, "w") as quiet:  # the server's log lines are not ours to show
        async with stdio_client(params, errlog=quiet) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)


def list_tools(
    source: McpToolSource, specs_dir: Path | str, *, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """``tools/list``: each tool as a spec's ``tools`` entry (name, description, parameters, mcp)."""

    async def work(session: Any) -> list[dict[str, Any]]:
        listed = await session.list_tools()
        return [
            {
                "name": tool.name,
                "description": (tool.description or tool.name).strip()[:500],
                "parameters": tool.input_schema or {"type": "object", "properties": {}},
                "mcp": {"server": source.server, "tool": tool.name},
            }
            for tool in listed.tools
        ]

    return asyncio.run(asyncio.wait_for(_with_session(source, specs_dir, work), timeout_s))


def call_tool(
    source: McpToolSource, tool: str, arguments: dict[str, Any], specs_dir: Path | str, *, timeout_s: float
) -> ToolRun:
    """One real ``tools/call``; the result is the tool's structured content, else its text."""

    async def work(session: Any) -> ToolRun:
        result = await session.call_tool(tool, arguments)
        texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        if result.is_error:
            return ToolRun(ok=False, error=("; ".join(texts) or "the server reported an error")[:500])
        if result.structured_content is not None:
            return ToolRun(ok=True, result=result.structured_content)
        return ToolRun(ok=True, result="\n".join(texts))

    try:
        return asyncio.run(asyncio.wait_for(_with_session(source, specs_dir, work), timeout_s))
    except TimeoutError:
        return ToolRun(ok=False, error=f"the MCP server did not answer within {timeout_s:g} s")
    except Exception as e:  # a server that dies or speaks something else: the call failed, say why
        return ToolRun(ok=False, error=f"MCP server {source.server!r}: {type(e).__name__}: {e}"[:500])


def tools_yaml(entries: list[dict[str, Any]]) -> str:
    """The entries as the ``tools:`` block of a spec (what ``synth tools import-mcp`` prints)."""
    import yaml

    return yaml.safe_dump({"tools": json.loads(json.dumps(entries))}, sort_keys=False, allow_unicode=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m synth_pipelines.tooluse.mcp_tools --server synth``: print a server's tools as a
    spec's ``tools:`` block, ready to paste into a tool-use spec (``--only`` keeps some)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--server", default="synth", help="'synth' or a Python file inside --specs")
    parser.add_argument(
        "--specs", default=os.environ.get("SYNTH_SCHEMAS", "schemas"), help="the specs folder"
    )
    parser.add_argument("--only", nargs="*", default=None, help="tool names to keep")
    args = parser.parse_args(argv)
    entries = list_tools(McpToolSource(server=args.server), args.specs)
    if args.only:
        entries = [e for e in entries if e["name"] in set(args.only)]
    sys.stdout.write(tools_yaml(entries))


if __name__ == "__main__":
    main()
