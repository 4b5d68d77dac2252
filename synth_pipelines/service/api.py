"""``synth serve``: the pipeline as a REST API (FastAPI; OpenAPI docs at ``/docs``).

Every endpoint calls :class:`~synth_pipelines.service.operations.SynthService`, the code the CLI
and the MCP tools call. Errors are JSON ``{"error": {"message", "field"}}`` with a 4xx status for
anything the caller can fix (a bad body, an unknown domain, a missing token, an oversize request).
"""

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synth_pipelines.service.guard import (
    ALLOWED_HOSTS_ENV,
    allowed_host_names,
    bearer_of,
    host_name,
    json_depth,
    require_token_off_loopback,
    token_matches,
    validation_message,
)
from synth_pipelines.service.operations import (
    DomainDetail,
    DomainSummary,
    RunInfo,
    ServiceError,
    SynthService,
)
from synth_pipelines.service.review_page import review_page
from synth_pipelines.service.tasks import ReviewQueue
from synth_pipelines.validation.review import LabelIn, ReviewProgress
from synth_pipelines.warehouse.search import SearchResult

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64
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


class ErrorDetail(BaseModel):
    message: str = Field(description="what is wrong and what to do")
    field: str | None = Field(description="the offending input (a dotted field path), or null")


class ErrorResponse(BaseModel):
    """Every 4xx (and the 503 of an unreachable Dagster) has this shape."""

    error: ErrorDetail


# Declared on every operation, so the OpenAPI document says what clients (and fuzzers) will get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "a request the service cannot honour (an unsafe name, a Host it does not serve)"),
        (401, "missing or wrong bearer token"),
        (404, "unknown domain, run or path"),
        (405, "method not allowed"),
        (409, "a run of the domain is already in flight"),
        (413, "request body too large"),
        (422, "a body, query or path value that does not validate"),
        (503, "the Dagster instance or webserver is unavailable"),
    )
}


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "field": field}})


class RequestGuard:
    """What every request passes before any endpoint sees it, as documented JSON errors:

    * its ``Host`` must be one this server answers to (DNS rebinding: a web page that points its
      own name at 127.0.0.1 must not reach a token-less loopback server), else 400 ``host``;
    * its body is read in full, at most ``limit`` bytes whether it declares its length or streams
      it, else 413 ``body``;
    * a JSON body nested deeper than ``MAX_JSON_DEPTH`` is 422 ``body`` (a parser would recurse).
    """

    def __init__(self, app: ASGIApp, limit: int, allowed_hosts: frozenset[str]):
        self.app = app
        self.limit = limit
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            await _error(
                400,
                f"host {host or '(none)'!r} is not served here; allowed: "
                f"{', '.join(sorted(self.allowed_hosts))} "
                f"(set {ALLOWED_HOSTS_ENV} or --allowed-host to add one)",
                "host",
            )(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, f"request body over {self.limit} bytes", "body")(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        more = scope.get("method") in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await _error(413, f"request body over {self.limit} bytes", "body")(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if body and (not content_type or "json" in content_type) and json_depth(body) > MAX_JSON_DEPTH:
            await _error(422, f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels", "body")(
                scope, receive, send
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    service: SynthService | None = None,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The API for ``service``. ``token`` (default: ``SYNTH_API_TOKEN``) is required as a bearer
    token on every ``/v1`` call; without one the server may only listen on a loopback address.
    ``allowed_hosts`` (default: ``SYNTH_ALLOWED_HOSTS``, else loopback names and ``host``) are the
    ``Host`` header names it answers to."""
    svc = service or SynthService()
    secret = require_token_off_loopback(host, token)
    bearer = HTTPBearer(auto_error=False)

    def token_ok(credentials: HTTPAuthorizationCredentials | None) -> bool:
        return token_matches(secret, credentials.credentials if credentials is not None else None)

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if not token_ok(credentials):
            raise ServiceError(
                "missing or wrong bearer token (Authorization: Bearer <token>)", field="authorization"
            )

    app = FastAPI(
        title="synth-pipelines",
        description="Launch, inspect, validate, search and export synthetic training data.",
        version="1",
        responses=ERROR_RESPONSES,
    )
    app.add_middleware(
        RequestGuard, limit=MAX_BODY_BYTES, allowed_hosts=allowed_host_names(host, secret, allowed_hosts)
    )

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        status = 401 if exc.field == "authorization" else exc.status
        return _error(status, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, *validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return _error(422, "body: not a JSON document (it could not be decoded)", "body")
        else:
            message = str(exc.detail)
        response = _error(exc.status_code, message, None)
        response.headers.update(exc.headers or {})  # e.g. the Allow header a 405 must carry
        return response

    @app.get("/health")
    def health(request: Request) -> dict[str, Any]:
        """Liveness; no token needed. Where this server reads and writes only for a caller the API
        would serve (a valid token, or any caller of a token-less loopback server): paths are nobody
        else's business. (The header is read by hand: the token is optional here, not required.)"""
        answer: dict[str, Any] = {"status": "ok", "auth": secret is not None}
        if token_matches(secret, bearer_of(request.headers.get("authorization"))):
            answer.update(
                warehouse=svc.settings.warehouse_root,
                schemas=svc.settings.schemas_dir,
                profile=svc.settings.profile,
            )
        return answer

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

    @app.get("/v1/domains/{domain}/review", dependencies=v1)
    def review_queue(
        domain: str,
        count: int = Query(default=20, ge=1, le=500),
        reviewer: str = Query(default="reviewer", max_length=64),
    ) -> ReviewQueue:
        """Rows for a reviewer to label next (accepted and rejected, nearest the threshold first,
        none they labelled), with their progress and agreement with the gate."""
        return svc.review_queue(domain, count=count, reviewer=reviewer)

    @app.post("/v1/domains/{domain}/review/labels", dependencies=v1)
    def review_label(domain: str, body: LabelIn) -> ReviewProgress:
        """Record a reviewer's label of one row (404: unknown example; 409: the content hash is not
        the row's current content)."""
        return svc.record_label(domain, body)

    # Its errors are JSON like every other endpoint's, though the page itself is HTML.
    page_errors = {
        status: {**answer, "content": {"application/json": {}}} for status, answer in ERROR_RESPONSES.items()
    }

    @app.get("/review/{domain}", response_class=HTMLResponse, responses=page_errors)
    def review(domain: str) -> HTMLResponse:
        """The review page (no data in it: it reads and writes through the ``/v1`` review
        endpoints with the token given in the address's fragment, ``#token=...``)."""
        return HTMLResponse(review_page(svc.safe_name(domain)))

    @app.get("/v1/domains/{domain}/export", dependencies=v1)
    def export(
        domain: str, format: Literal["sft", "dpo", "qa", "grpo", "retrieval"] = "sft"
    ) -> StreamingResponse:
        """A training export, streamed as JSON lines."""
        fmt: Literal["sft", "dpo", "qa", "grpo-verifiable", "retrieval"] = (
            "grpo-verifiable" if format == "grpo" else format
        )
        lines = svc.export_lines(domain, fmt)
        return StreamingResponse(
            (line.encode() for line in lines),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{domain}_{format}.jsonl"'},
        )

    return app


def serve_api(*, host: str = "127.0.0.1", port: int = 8000, allowed_hosts: list[str] | None = None) -> None:
    """Serve the REST API on uvicorn until the process is stopped (the app is built first, so a
    missing token off loopback fails before anything listens). Runs it launches land in
    ``DAGSTER_HOME``, or ./.dagster_home as for ``make dev``."""
    import uvicorn

    from synth_pipelines.service.operations import default_dagster_home

    default_dagster_home()
    uvicorn.run(create_app(host=host, allowed_hosts=allowed_hosts), host=host, port=port, log_level="info")
