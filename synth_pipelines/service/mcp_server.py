"""``synth mcp``: the pipeline as MCP tools and resources (the official ``mcp`` SDK, stdio or
streamable HTTP), for agents.

Tools call :class:`~synth_pipelines.service.operations.SynthService`, as the REST API and the CLI
do. Each has a typed input schema and returns structured content; ``synth_generate`` returns a
run id at once (poll it with ``synth_status``) instead of blocking for the run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from synth_pipelines.planning.forecast import Plan
from synth_pipelines.service.guard import (
    allowed_host_names,
    bearer_of,
    require_token_off_loopback,
    token_matches,
    validation_message,
)
from synth_pipelines.service.models import BadInput, DomainDetail, DomainSummary, RunInfo, ServiceError
from synth_pipelines.service.operations import SynthService, default_dagster_home
from synth_pipelines.service.tasks import ReviewQueue
from synth_pipelines.validation.review import LabelIn, ReviewProgress
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


def _call(fn: Any, *args: Any, error: type[Exception] = ToolError, **kwargs: Any) -> Any:
    """Run a service operation; its error becomes the tool's (or resource's) error message, never a
    traceback."""
    try:
        return fn(*args, **kwargs)
    except ServiceError as e:
        where = f" ({e.field})" if e.field else ""
        raise error(f"{e.message}{where}") from None


class SynthMCPServer(MCPServer):
    """MCPServer whose argument errors read like the REST API's: ``tool: field: what is wrong``,
    not pydantic's multi-line text with its documentation URL."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            message, _ = validation_message(cause.errors(include_url=False))
            raise ToolError(f"{name}: invalid arguments: {message}") from cause


def build_mcp(service: SynthService | None = None) -> MCPServer:
    """The MCP server over ``service`` (default: configured from the environment)."""
    svc = service or SynthService()
    server: MCPServer = SynthMCPServer("synth-pipelines", instructions=INSTRUCTIONS)

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

    @server.tool(name="synth_review_queue")
    def review_queue(
        domain: Annotated[str, Field(max_length=64)],
        count: Annotated[int, Field(ge=1, le=100)] = 10,
        reviewer: Annotated[str, Field(max_length=64)] = "reviewer",
    ) -> ReviewQueue:
        """Rows of the domain for a reviewer to label next: accepted and rejected, the gate's
        closest calls first, none the reviewer labelled; label them with synth_review_label."""
        return _call(svc.review_queue, domain, count=count, reviewer=reviewer)

    @server.tool(name="synth_review_label")
    def review_label(domain: Annotated[str, Field(max_length=64)], label: LabelIn) -> ReviewProgress:
        """Record a reviewer's good/bad label of one row from synth_review_queue (with the row's
        content_hash as given there); returns the reviewer's progress and agreement with the gate."""
        return _call(svc.record_label, domain, label)

    @server.tool(name="synth_record_outcome")
    def record_outcome(
        domain: Annotated[str, Field(max_length=64)],
        success: bool,
        outcome_id: Annotated[str, Field(min_length=1, max_length=200)],
        cell_id: Annotated[str | None, Field(max_length=64)] = None,
        tags: Annotated[list[str] | None, Field(max_length=32)] = None,
        agent: Annotated[str, Field(max_length=100)] = "mcp",
    ) -> OutcomeReport:
        """Report whether an agent's task in a domain succeeded (drives the feedback loop)."""
        report = _call(
            svc.record_outcome,
            domain,
            success,
            outcome_id=outcome_id,
            cell_id=cell_id,
            tags=tags,
            agent=agent,
        )
        if report.rejected and not report.accepted:
            raise ToolError(report.rejected[0].reason)
        return OutcomeReport(accepted=report.accepted, rejected=[r.model_dump() for r in report.rejected])

    @server.resource("synth://domains/{domain}/spec", mime_type="application/yaml")
    def spec(domain: str) -> str:
        """The domain's spec (YAML)."""
        return str(_call(svc.spec_text, domain, error=ResourceError))

    @server.resource("synth://domains/{domain}/card", mime_type="text/markdown")
    def card(domain: str) -> str:
        """The domain's dataset card (Markdown)."""
        return str(_call(svc.dataset_card, domain, error=ResourceError))

    return server


class BearerToken:
    """Every HTTP request to the MCP endpoint must carry ``Authorization: Bearer <token>`` when the
    server has one (401 JSON otherwise); lifespan events pass through."""

    def __init__(self, app: ASGIApp, secret: str | None):
        self.app = app
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            presented = bearer_of(headers.get(b"authorization", b"").decode("latin-1"))
            if not token_matches(self.secret, presented):
                from starlette.responses import JSONResponse

                await JSONResponse(
                    status_code=401,
                    content={
                        "error": {
                            "message": "missing or wrong bearer token (Authorization: Bearer <token>)",
                            "field": "authorization",
                        }
                    },
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mcp_http_app(
    service: SynthService | None = None,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> ASGIApp:
    """The streamable-HTTP MCP app, under the REST API's rules: a token (``SYNTH_API_TOKEN``) is
    required off loopback and checked on every request, and the SDK's DNS-rebinding protection
    admits only the allowed ``Host`` names (and browser ``Origin``s on them)."""
    from mcp.server.transport_security import TransportSecuritySettings

    secret = require_token_off_loopback(host, token)
    names = allowed_host_names(host, secret, allowed_hosts)
    if "*" in names:
        # Bound to every interface with a token: the token protects it, any name may reach it.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    else:
        literal = [f"[{n}]" if ":" in n else n for n in sorted(names)]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[*literal, *(f"{n}:*" for n in literal)],
            allowed_origins=[f"{scheme}://{n}{port}" for n in literal for scheme in ("http", "https")
                             for port in ("", ":*")],
        )  # fmt: skip
    app = build_mcp(service).streamable_http_app(transport_security=security, host=host)
    return BearerToken(app, secret)


def serve_mcp(
    transport: Literal["stdio", "streamable-http"] = "stdio",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Run the MCP server until the client disconnects (stdio) or the process is stopped (HTTP)."""
    if transport not in ("stdio", "streamable-http"):
        raise BadInput(f"--transport {transport!r}: choose stdio or streamable-http", field="transport")
    default_dagster_home()  # runs it launches land where the UI reads (./.dagster_home by default)
    if transport == "stdio":
        build_mcp().run("stdio")
        return
    import uvicorn

    uvicorn.run(mcp_http_app(host=host, allowed_hosts=allowed_hosts), host=host, port=port, log_level="info")
