"""``synth mcp``: the pipeline as MCP tools and resources (the official ``mcp`` SDK, stdio or
streamable HTTP), for agents.

Tools call :class:`~synth_pipelines.service.operations.SynthService`, as the REST API and the CLI
do. Each has a typed input schema and returns structured content; ``synth_generate`` returns a
run id at once (poll it with ``synth_status``) instead of blocking for the run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from synth_pipelines.learning.plan import Plan
from synth_pipelines.service.operations import (
    DomainDetail,
    DomainSummary,
    RunInfo,
    ServiceError,
    SynthService,
)
from synth_pipelines.warehouse.search import SearchResult

INSTRUCTIONS = (
    "synth-pipelines makes validated synthetic training data per domain. List domains, search a "
    "domain's accepted examples, validate rows against a domain's gates, launch a generation run "
    "(returns a run id; poll synth_status with it), and report agent outcomes so weak domains are "
    "regenerated."
)


class DomainList(BaseModel):
    domains: list[DomainSummary]


class Status(BaseModel):
    """A run's status when ``run_id`` was given, else the domain's."""

    run: RunInfo | None = None
    domain: DomainDetail | None = None


class Verdicts(BaseModel):
    domain: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


class OutcomeReport(BaseModel):
    accepted: int
    rejected: list[dict[str, Any]]


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a service operation; its error becomes the tool's error message (never a traceback)."""
    try:
        return fn(*args, **kwargs)
    except ServiceError as e:
        where = f" ({e.field})" if e.field else ""
        raise ToolError(f"{e.message}{where}") from None


def build_mcp(service: SynthService | None = None) -> MCPServer:
    """The MCP server over ``service`` (default: configured from the environment)."""
    svc = service or SynthService()
    server: MCPServer = MCPServer("synth-pipelines", instructions=INSTRUCTIONS)

    @server.tool(name="synth_list_domains")
    def list_domains() -> DomainList:
        """Every domain with a spec, with generated/accepted counts, pass rate and diversity."""
        return DomainList(domains=_call(svc.list_domains))

    @server.tool(name="synth_status")
    def status(
        domain: Annotated[str | None, Field(description="a domain name", max_length=64)] = None,
        run_id: Annotated[
            str | None, Field(description="a run id from synth_generate", max_length=64)
        ] = None,
    ) -> Status:
        """A run's status (give run_id), or a domain's status, latest metrics and checks (give domain)."""
        if run_id:
            return Status(run=_call(svc.run, run_id))
        if domain:
            return Status(domain=_call(svc.domain_detail, domain))
        raise ToolError("give domain or run_id")

    @server.tool(name="synth_generate")
    def generate(
        domain: Annotated[str, Field(description="the domain to (re)generate", max_length=64)],
        target_count: Annotated[int | None, Field(ge=1, le=1_000_000)] = None,
        weak_cells: Annotated[list[str] | None, Field(max_length=1000)] = None,
    ) -> RunInfo:
        """Launch a run of the domain's whole pipeline. Returns at once with the run id."""
        return _call(svc.launch, domain, target_count=target_count, weak_cells=weak_cells)

    @server.tool(name="synth_plan")
    def plan(
        domain: Annotated[str, Field(description="the domain to plan", max_length=64)],
        target_count: Annotated[int | None, Field(ge=1, le=10_000_000)] = None,
    ) -> Plan:
        """Forecast a run before launching it: model calls, tokens, dollars and wall time per asset,
        with what the response cache already answers. Calls no model."""
        return _call(svc.plan, domain, target_count=target_count)

    @server.tool(name="synth_validate")
    def validate(
        domain: Annotated[str, Field(max_length=64)],
        rows: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)],
        models: bool = False,
    ) -> Verdicts:
        """Per-row verdicts of the domain's gates (rules, dedup; the judge panel with models=true)."""
        report = _call(svc.validate, domain, rows, models=models)
        return Verdicts(domain=report["domain"], summary=report["summary"], rows=report["rows"])

    @server.tool(name="synth_search")
    def search(
        domain: Annotated[str, Field(max_length=64)],
        query: Annotated[str, Field(min_length=1, max_length=2000)],
        k: Annotated[int, Field(ge=1, le=100)] = 10,
    ) -> SearchResult:
        """The k accepted examples of the domain nearest in meaning to the query."""
        return _call(svc.search, domain, query, k=k)

    @server.tool(name="synth_record_outcome")
    def record_outcome(
        domain: Annotated[str, Field(max_length=64)],
        success: bool,
        outcome_id: Annotated[str, Field(min_length=1, max_length=200)],
        cell_id: Annotated[str | None, Field(max_length=64)] = None,
        tags: Annotated[list[str] | None, Field(max_length=50)] = None,
        agent: Annotated[str, Field(max_length=100)] = "mcp",
    ) -> OutcomeReport:
        """Report whether an agent's task in a domain succeeded (drives the feedback loop)."""
        from datetime import UTC, datetime

        row = {
            "outcome_id": outcome_id,
            "domain": domain,
            "cell_id": cell_id,
            "tags": tags or [],
            "success": success,
            "recorded_at": datetime.now(UTC),
            "agent": agent,
        }
        report = _call(svc.record_outcomes, [row])
        if report.rejected and not report.accepted:
            raise ToolError(report.rejected[0].reason)
        return OutcomeReport(accepted=report.accepted, rejected=[r.model_dump() for r in report.rejected])

    @server.resource("synth://domains/{domain}/spec", mime_type="application/yaml")
    def spec(domain: str) -> str:
        """The domain's spec (YAML)."""
        return str(_call(svc.spec_text, domain))

    @server.resource("synth://domains/{domain}/card", mime_type="text/markdown")
    def card(domain: str) -> str:
        """The domain's dataset card (Markdown)."""
        return str(_call(svc.dataset_card, domain))

    return server


def serve_mcp(
    transport: Literal["stdio", "streamable-http"] = "stdio", *, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """Run the MCP server until the client disconnects (stdio) or the process is stopped (HTTP)."""
    server = build_mcp()
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
