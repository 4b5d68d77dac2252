"""``synth serve``: the pipeline as a REST API (FastAPI; OpenAPI docs at ``/docs``).

Every endpoint calls :class:`~synth_pipelines.service.operations.SynthService`, the code the CLI
and the MCP tools call. Errors are JSON ``{"error": {"message", "field"}}`` with a 4xx status for
anything the caller can fix (a bad body, an unknown domain, a missing token, an oversize request).
"""

import hmac
import os
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synth_pipelines.service.operations import (
    DomainDetail,
    DomainSummary,
    RunInfo,
    ServiceError,
    SynthService,
)
from synth_pipelines.warehouse.search import SearchResult

TOKEN_ENV = "SYNTH_API_TOKEN"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_VALIDATE_ROWS = 1000
MAX_OUTCOMES = 10_000
MAX_WEAK_CELLS = 1000


class RunRequest(BaseModel):
    target_count: int | None = Field(default=None, ge=1, le=1_000_000, description="examples to aim for")
    weak_cells: list[str] = Field(
        default_factory=list, max_length=MAX_WEAK_CELLS, description="matrix cell ids to aim at"
    )


class ValidateRequest(BaseModel):
    domain: str = Field(max_length=64)
    rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_VALIDATE_ROWS)
    models: bool = Field(default=True, description="also run the validator panel (slower)")


class OutcomesRequest(BaseModel):
    outcomes: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_OUTCOMES)


class OutcomesReport(BaseModel):
    accepted: int
    rejected: list[dict[str, Any]]


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "field": field}})


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, whether it declares its length or
    streams it (counted as it arrives), before the endpoint sees any of it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, f"request body over {self.limit} bytes", "body")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _error(413, f"request body over {self.limit} bytes", "body")(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(
    service: SynthService | None = None, *, host: str = "127.0.0.1", token: str | None = None
) -> FastAPI:
    """The API for ``service``. ``token`` (default: ``SYNTH_API_TOKEN``) is required as a bearer
    token on every ``/v1`` call; without one the server may only listen on a loopback address."""
    svc = service or SynthService()
    secret = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if secret is None and host not in LOOPBACK:
        raise ServiceError(
            f"refusing to serve on {host} without a token: set {TOKEN_ENV} (clients send "
            "'Authorization: Bearer <token>'), or bind to 127.0.0.1"
        )
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if secret is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), secret.encode()):
            raise ServiceError(
                "missing or wrong bearer token (Authorization: Bearer <token>)", field="authorization"
            )

    app = FastAPI(
        title="synth-pipelines",
        description="Launch, inspect, validate, search and export synthetic training data.",
        version="1",
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        status = 401 if exc.field == "authorization" else exc.status
        return _error(status, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        return _error(422, f"{field or 'request'}: {first.get('msg')}", field)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, and where this server reads and writes."""
        return {
            "status": "ok",
            "warehouse": svc.settings.warehouse_root,
            "schemas": svc.settings.schemas_dir,
            "profile": svc.settings.profile,
            "auth": secret is not None,
        }

    v1 = [Depends(authorized)]

    @app.get("/v1/domains", dependencies=v1)
    def list_domains() -> list[DomainSummary]:
        """Every domain with a spec, with its counts."""
        return svc.list_domains()

    @app.get("/v1/domains/{domain}", dependencies=v1)
    def domain(domain: str) -> DomainDetail:
        """Status, the latest metrics per asset and the latest asset-check results."""
        return svc.domain_detail(domain)

    @app.post("/v1/domains/{domain}/runs", status_code=202, dependencies=v1)
    def launch(domain: str, body: RunRequest | None = None) -> RunInfo:
        """Launch a materialization of the domain's whole graph; poll ``/v1/runs/{run_id}``."""
        request = body or RunRequest()
        return svc.launch(domain, target_count=request.target_count, weak_cells=request.weak_cells)

    @app.get("/v1/domains/{domain}/plan", dependencies=v1)
    def plan(
        domain: str,
        target_count: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
        save: bool = True,
    ) -> dict[str, Any]:
        """The forecast of a run (calls, tokens, dollars, wall time per asset); no model is called."""
        forecast = svc.plan(domain, target_count=target_count, save=save)
        return {**forecast.model_dump(mode="json"), "totals": forecast.summary()}

    @app.get("/v1/runs/{run_id}", dependencies=v1)
    def run(run_id: str) -> RunInfo:
        """A run's status (and its failure message once failed)."""
        return svc.run(run_id)

    @app.post("/v1/validate", dependencies=v1)
    def validate(body: ValidateRequest) -> dict[str, Any]:
        """Per-row verdicts of the domain's gates for rows the caller brings."""
        return svc.validate(body.domain, body.rows, models=body.models)

    @app.get("/v1/search", dependencies=v1)
    def search(
        domain: str = Query(max_length=64),
        q: str = Query(min_length=1, max_length=2000),
        k: int = Query(default=10, ge=1, le=1000),
        exact: bool = False,
    ) -> SearchResult:
        """The ``k`` accepted examples nearest to ``q``, with scores and provenance."""
        return svc.search(domain, q, k=k, exact=exact)

    @app.post("/v1/outcomes", dependencies=v1)
    def outcomes(body: OutcomesRequest) -> JSONResponse:
        """Agent outcomes for the feedback loop. 200 with the rejected rows listed when some were
        stored; 422 when none could be."""
        report = svc.record_outcomes(body.outcomes)
        payload = OutcomesReport(accepted=report.accepted, rejected=[r.model_dump() for r in report.rejected])
        if report.rejected and not report.accepted:
            first = report.rejected[0]
            return _error(422, f"outcomes.{first.position}: {first.reason}", f"outcomes.{first.position}")
        return JSONResponse(payload.model_dump())

    @app.get("/v1/domains/{domain}/export", dependencies=v1)
    def export(domain: str, format: Literal["sft", "dpo", "qa", "grpo"] = "sft") -> StreamingResponse:
        """A training export, streamed as JSON lines."""
        fmt: Literal["sft", "dpo", "qa", "grpo-verifiable"] = (
            "grpo-verifiable" if format == "grpo" else format
        )
        lines = svc.export_lines(domain, fmt)
        return StreamingResponse(
            (line.encode() for line in lines),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{domain}_{format}.jsonl"'},
        )

    return app
