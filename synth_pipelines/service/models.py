"""What the service's operations take and return: settings, errors and result models. Shared by
the operations, the REST API, the MCP tools and the CLI."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field

from synth_pipelines.warehouse.storage import location_from_env


class ServiceError(Exception):
    """A request the service cannot honour. ``status`` is the HTTP status the API answers with;
    ``field`` names the offending input when there is one."""

    status = 400
    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class BadInput(ServiceError):
    """A malformed request (an unsafe name, an unknown choice, an unusable location): the CLI exits
    with 2, as for a usage error; the API answers 400."""

    exit_code = 2


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Unavailable(ServiceError):
    status = 503


class RunInfo(BaseModel):
    run_id: str
    domain: str | None = None
    status: str
    done: bool
    success: bool | None = None
    error: str | None = None
    note: str | None = None
    url: str | None = None


class DomainSummary(BaseModel):
    domain: str
    spec_file: str
    generated: int = 0
    accepted: int = 0
    pass_rate: float | None = None
    diversity: float | None = None
    program_score: float | None = None
    last_run: str | None = None


class CheckResult(BaseModel):
    check: str
    asset: str
    passed: bool | None
    status: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DomainDetail(DomainSummary):
    description: str = ""
    spec_version: str | None = None
    in_flight_run: str | None = None
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)


class ServiceSettings(BaseModel):
    """Where the service finds specs, data and models; resolved from the same environment
    variables as the Dagster definitions, so the runs it launches see the same places."""

    warehouse_root: str
    state_dir: str | None
    schemas_dir: str
    profile: str
    dagster_url: str | None = None

    @classmethod
    def from_env(
        cls, *, warehouse: str | None = None, schemas: str | None = None, profile: str | None = None
    ) -> ServiceSettings:
        """The environment's settings (``SYNTH_WAREHOUSE``, ``SYNTH_SCHEMAS``, ``SYNTH_PROFILE``,
        ``SYNTH_DAGSTER_URL``), each overridable (the CLI's ``--warehouse``, ``--schemas``,
        ``--profile``)."""
        root, state = location_from_env(warehouse)
        return cls(
            warehouse_root=root,
            state_dir=state,
            schemas_dir=schemas or os.environ.get("SYNTH_SCHEMAS", "schemas"),
            profile=profile or os.environ.get("SYNTH_PROFILE", "local"),
            dagster_url=os.environ.get("SYNTH_DAGSTER_URL") or None,
        )
