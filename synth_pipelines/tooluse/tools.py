"""The tools of a ``tool-use`` spec: where their code is, what their arguments must be, and one call
of one of them from what a model wrote (arguments checked against the tool's JSON schema, then run
for real in the sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from pydantic import BaseModel

from synth_pipelines.spec.model import DomainSpec, ToolSpec, resolve_in_specs_folder
from synth_pipelines.tooluse.mcp_tools import McpError, call_tool, server_command
from synth_pipelines.tooluse.sandbox import run_tool


class ToolError(ValueError):
    """A tool a spec declares that cannot be used; the message names the tool, the file and the fix."""


class CallOutcome(BaseModel):
    """One call as the trace records it, or why it was refused (``kind``: schema or execution)."""

    name: str
    arguments: str
    result: str | None = None
    error: str | None = None
    kind: str | None = None


class ToolSet:
    """A spec's tools, their files resolved inside the specs folder."""

    def __init__(self, spec: DomainSpec, specs_dir: Path | str):
        self.spec = spec
        self.specs_dir = specs_dir
        self.tools = {t.name: t for t in spec.tools}
        self.files = {t.name: tool_file(specs_dir, t) for t in spec.tools if t.module is not None}
        for tool in spec.tools:  # an MCP server's command is checked now, not at the first call
            if tool.mcp is not None:
                try:
                    server_command(tool.mcp, specs_dir)
                except McpError as e:
                    raise ToolError(f"tools[{tool.name}]: {e}") from None

    def call(self, name: str, arguments: str) -> CallOutcome:
        """Check the model's call and run it; never raises for what the model got wrong."""
        tool = self.tools.get(name)
        if tool is None:
            return CallOutcome(
                name=name,
                arguments=arguments,
                kind="schema",
                error=f"no tool named {name!r} (tools: {list(self.tools)})",
            )
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as e:
            return CallOutcome(
                name=name, arguments=arguments, kind="schema", error=f"arguments are not JSON: {e}"
            )
        if not isinstance(parsed, dict):
            return CallOutcome(
                name=name, arguments=arguments, kind="schema", error="arguments must be a JSON object"
            )
        problem = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(tool.parameters).iter_errors(parsed)
        )
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "arguments"
            return CallOutcome(
                name=name, arguments=arguments, kind="schema", error=f"{where}: {problem.message}"
            )
        if tool.mcp is not None:
            run = call_tool(
                tool.mcp, tool.mcp.tool or tool.name, parsed, self.specs_dir, timeout_s=tool.timeout_s
            )
        else:
            run = run_tool(
                self.files[name], tool.function, parsed, timeout_s=tool.timeout_s, memory_mb=tool.memory_mb
            )
        run = run.within_limit()
        if not run.ok:
            return CallOutcome(name=name, arguments=arguments, kind="execution", error=run.error)
        return CallOutcome(name=name, arguments=json.dumps(parsed, sort_keys=True), result=run.text())


def tool_file(specs_dir: Path | str, tool: ToolSpec) -> Path:
    """The tool's Python file, which must exist inside the specs folder (symlinks resolved)."""
    root, path = resolved = resolve_in_specs_folder(specs_dir, str(tool.module))
    if not resolved.inside:
        raise ToolError(
            f"tools[{tool.name}].module {tool.module!r} leaves the specs folder {root}; keep tools inside it"
        )
    if not path.is_file() or path.suffix != ".py":
        raise ToolError(
            f"tools[{tool.name}].module: {path} is not a Python file; point it at the tool's .py file"
        )
    return path
