"""The operations every surface offers: the CLI (``synth``), the REST API (``synth serve``) and the
MCP tools (``synth mcp``) call :class:`SynthService`, so there is one implementation of each: launch
and run status, domains and their checks, plan, search, exports and cards here; the operations that
run in this process (generate, validate, calibrate, train, benchmark, doctor, status, export,
outcomes, spec files) in :mod:`synth_pipelines.service.tasks`.

Runs go through the Dagster instance so that they show in the UI: through the webserver's GraphQL
API when ``SYNTH_DAGSTER_URL`` names one, otherwise submitted to the instance as ``dagster job
launch`` does (its run coordinator queues them, its run launcher starts them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from synth_pipelines.service.models import (
    BadInput,
    CheckResult,
    Conflict,
    DomainDetail,
    DomainSummary,
    NotFound,
    RunInfo,
    ServiceError,
    ServiceSettings,
    Unavailable,
)
from synth_pipelines.service.tasks import LocalOperations
from synth_pipelines.spec.loading import discover_specs, load_spec
from synth_pipelines.spec.model import SpecError
from synth_pipelines.warehouse.search import SearchError, SearchResult, search
from synth_pipelines.warehouse.status import domain_status
from synth_pipelines.warehouse.storage import StorageError, Warehouse

if TYPE_CHECKING:
    # Dagster and the planner load with the operations that need them: the `synth` command starts
    # in well under a second.
    import dagster as dg

    from synth_pipelines.planning.forecast import Plan

CODE_LOCATION = "synth_pipelines.definitions"
# Run statuses (``DagsterRunStatus`` names) of a run that is queued or running.
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
# The assets whose latest materialization metadata a domain's detail shows.
METRIC_ASSETS = (
    "raw_generations",
    "validated_examples",
    "example_embeddings",
    "example_index",
    "compiled_program",
)
METRIC_KEYS = {
    "rows",
    "input_rows",
    "rejected",
    "overall_pass_rate",
    "consensus_pass_rate",
    "mean_consensus",
    "consensus_threshold",
    "mean_pairwise_cosine_distance",
    "semantic_clusters",
    "recall_at_10",
    "method",
    "score",
    "cost_usd",
    "total_tokens",
    "billed_tokens",
    "model_calls",
    # How close the plan saved before the run came (present when there was one).
    "planned_model_calls",
    "planned_cost_usd",
    "plan_calls_error_pct",
    "plan_cost_error_pct",
}


def default_dagster_home() -> None:
    """Runs launched by the API or the MCP tools must land in an instance the UI reads: without
    DAGSTER_HOME, use ./.dagster_home as `make dev` does (created, with the project's dagster.yaml
    when there is one)."""
    if os.environ.get("DAGSTER_HOME"):
        return
    home = Path(".dagster_home").resolve()
    home.mkdir(exist_ok=True)
    project_config = Path("dagster.yaml")
    if project_config.is_file() and not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(project_config.read_text())
    os.environ["DAGSTER_HOME"] = str(home)


def _metadata_value(value: Any) -> Any:
    raw = getattr(value, "value", value)
    if isinstance(raw, int | float | str | bool) or raw is None:
        return raw
    return str(raw)


class SynthService(LocalOperations):
    """The shared operations over one warehouse, one specs folder and one Dagster instance."""

    def __init__(self, settings: ServiceSettings | None = None, instance: dg.DagsterInstance | None = None):
        self.settings = settings or ServiceSettings.from_env()
        try:
            self.warehouse = Warehouse(self.settings.warehouse_root, state_dir=self.settings.state_dir)
        except StorageError as e:
            raise BadInput(str(e), field="warehouse") from None
        self._instance = instance

    # ------------------------------------------------------------------ domains
    @staticmethod
    def pipeline_steps() -> list[str]:
        """The domain's assets in dependency order (what progress shows)."""
        from synth_pipelines.assets import PIPELINE_STEPS

        return list(PIPELINE_STEPS)

    @property
    def instance(self) -> dg.DagsterInstance:
        import dagster as dg

        if self._instance is None:
            if not os.environ.get("DAGSTER_HOME"):
                raise Unavailable(
                    "no Dagster instance: set DAGSTER_HOME (make sets it to ./.dagster_home) so that runs "
                    "are recorded where the UI reads them"
                )
            self._instance = dg.DagsterInstance.get()
        return self._instance

    def list_domains(self) -> list[DomainSummary]:
        """Every domain with a spec, with its counts when it has data."""
        status = {row["domain"]: row for row in domain_status(self.warehouse)}
        return [
            DomainSummary(
                domain=domain,
                spec_file=str(path),
                **{k: v for k, v in status.get(domain, {}).items() if k != "domain" and v is not None},
            )
            for domain, path in sorted(discover_specs(self.settings.schemas_dir).items())
        ]

    def domain_detail(self, domain: str) -> DomainDetail:
        """A domain's status, the latest metrics of each asset, and its latest check results."""
        domain = self.domain_name(domain)
        summary = next(d for d in self.list_domains() if d.domain == domain)
        detail = DomainDetail(**summary.model_dump())
        try:
            detail.description = load_spec(Path(summary.spec_file)).spec.description
        except SpecError as e:
            detail.description = f"(invalid spec: {str(e).splitlines()[0]})"
        materialized = self.warehouse.materialized_spec(domain)
        detail.spec_version = materialized.version_str if materialized else None
        in_flight = self.in_flight_runs(domain)
        detail.in_flight_run = in_flight[0] if in_flight else None
        detail.metrics = self._latest_metrics(domain)
        detail.checks = self._latest_checks(domain)
        return detail

    def _latest_metrics(self, domain: str) -> dict[str, dict[str, Any]]:
        import dagster as dg

        metrics: dict[str, dict[str, Any]] = {}
        for asset in METRIC_ASSETS:
            result = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[domain]), limit=1
            )
            if not result.records:
                continue
            record = result.records[0]
            materialization = record.asset_materialization
            if materialization is None:
                continue
            metrics[asset] = {
                "run_id": record.run_id,
                "timestamp": record.timestamp,
                **{k: _metadata_value(v) for k, v in materialization.metadata.items() if k in METRIC_KEYS},
            }
        return metrics

    def _latest_checks(self, domain: str) -> list[CheckResult]:
        from dagster._core.event_api import PartitionKeyFilter

        from synth_pipelines.assets.checks import QUALITY_CHECKS

        keys = [key for check in QUALITY_CHECKS for key in check.check_keys]
        latest = self.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=domain)
        )
        results = []
        for key in keys:
            record = latest.get(key)
            if record is None:
                continue
            evaluation = (
                record.event.dagster_event.event_specific_data
                if record.event and record.event.dagster_event
                else None
            )
            passed = getattr(evaluation, "passed", None)
            metadata = getattr(evaluation, "metadata", {}) or {}
            results.append(
                CheckResult(
                    check=key.name,
                    asset=key.asset_key.to_user_string(),
                    passed=passed,
                    status=str(record.status.value),
                    metadata={k: _metadata_value(v) for k, v in metadata.items()},
                )
            )
        return results

    # ------------------------------------------------------------------ runs
    def in_flight_runs(self, domain: str) -> list[str]:
        import dagster as dg

        statuses = [dg.DagsterRunStatus[name] for name in IN_FLIGHT]
        runs = self.instance.get_run_records(
            dg.RunsFilter(statuses=statuses, tags={"dagster/partition": domain}), limit=5
        )
        return [r.dagster_run.run_id for r in runs]

    def launch(
        self, domain: str, *, target_count: int | None = None, weak_cells: list[str] | None = None
    ) -> RunInfo:
        """Launch a materialization of the whole graph for ``domain``; returns at once with the run
        id. A domain with a run already queued or running gets a Conflict naming that run."""
        from synth_pipelines.assets.spec_file import observe_spec
        from synth_pipelines.jobs import job_name_for

        domain = self.domain_name(domain)
        try:
            spec = load_spec(self.spec_file(domain)).spec
        except SpecError as e:
            raise ServiceError(str(e), field="domain") from None
        job_name = job_name_for(spec.type)
        matrix: dict[str, Any] = {}
        if target_count is not None:
            matrix["target_count"] = target_count
        if weak_cells:
            matrix["weak_cells"] = weak_cells
        if matrix and spec.statistical:
            raise ServiceError(
                f"{domain!r} is a {spec.type} domain: its size is set in its spec, "
                "not by target_count or weak_cells",
                field="target_count",
            )
        busy = self.in_flight_runs(domain)
        if busy:
            raise Conflict(
                f"domain {domain!r} already has run {busy[0]} in flight; poll it, or launch when it ends"
            )
        run_config = {"ops": {"problem_matrix": {"config": matrix}}} if matrix else {}
        tags = {"dagster/partition": domain, "synth/launched_by": "service"}
        self._register_partition(domain)
        observe_spec(self.instance, self.settings.schemas_dir, domain, self.warehouse)  # the run's inputs
        if self.settings.dagster_url:
            run_id = self._launch_graphql(job_name, run_config, tags)
        else:
            run_id = self._launch_on_instance(job_name, run_config, tags)
        return self.run(run_id)

    def _register_partition(self, domain: str) -> None:
        from synth_pipelines.partitions import DOMAIN_PARTITIONS_NAME
        from synth_pipelines.resources.pools import ensure_pool_limit

        ensure_pool_limit(self.instance)
        if not self.instance.has_dynamic_partition(DOMAIN_PARTITIONS_NAME, domain):
            self.instance.add_dynamic_partitions(DOMAIN_PARTITIONS_NAME, [domain])

    def _launch_graphql(self, job_name: str, run_config: dict[str, Any], tags: dict[str, str]) -> str:
        from urllib.parse import urlparse

        from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

        url = urlparse(self.settings.dagster_url or "")
        client = DagsterGraphQLClient(
            url.hostname or "localhost",
            port_number=url.port,
            use_https=url.scheme == "https",
            path_prefix=url.path.rstrip("/"),
        )
        try:
            return str(client.submit_job_execution(job_name, run_config=run_config, tags=tags))
        except DagsterGraphQLClientError as e:
            raise Unavailable(
                f"the Dagster webserver at {self.settings.dagster_url} refused the run: {e}"
            ) from e

    def _launch_on_instance(self, job_name: str, run_config: dict[str, Any], tags: dict[str, str]) -> str:
        # What `dagster job launch -m synth_pipelines.definitions` does: load the code location,
        # create the run from its snapshot, submit it to the instance's run coordinator.
        from dagster._cli.job import execute_launch_command
        from dagster_shared.cli import WorkspaceOpts

        run = execute_launch_command(
            instance=self.instance,
            workspace_opts=WorkspaceOpts(module_name=(CODE_LOCATION,)),
            config_json=json.dumps(run_config),
            tags=json.dumps(tags),
            job_name=job_name,
        )
        return str(run.run_id)

    def run(self, run_id: str) -> RunInfo:
        """A run's status; for a failed run, the first step failure's message."""
        import dagster as dg

        record = self.instance.get_run_record_by_id(run_id)
        if record is None:
            raise NotFound(f"no run {run_id!r} in the Dagster instance", field="run_id")
        run = record.dagster_run
        status = run.status
        done = status in {
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        }
        error = self._failure_message(run_id) if status == dg.DagsterRunStatus.FAILURE else None
        base = (self.settings.dagster_url or "").rstrip("/")
        return RunInfo(
            run_id=run_id,
            domain=run.tags.get("dagster/partition"),
            status=status.value,
            done=done,
            success=(status == dg.DagsterRunStatus.SUCCESS) if done else None,
            error=error,
            note=(
                "queued: the Dagster daemon starts it when the model pool is free "
                "(`make dev` runs one; otherwise run `dagster-daemon run`)"
                if status == dg.DagsterRunStatus.QUEUED
                else None
            ),
            url=f"{base}/runs/{run_id}" if base else None,
        )

    def _failure_message(self, run_id: str) -> str | None:
        import dagster as dg

        for event in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            data = event.dagster_event.step_failure_data if event.dagster_event else None
            if data is None:
                continue
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description.strip().splitlines()[0]
            if data.error:
                return data.error.message.strip().splitlines()[0]
        return "the run failed (see the Dagster UI for its logs)"

    # ------------------------------------------------------------------ data
    def plan(
        self, domain: str, *, target_count: int | None = None, seed_count: int = 5, save: bool = True
    ) -> Plan:
        """The forecast of a run of ``domain`` (no model is called; see ``planning/forecast.py``),
        of the spec as the run would resolve it; saved, unless ``save`` is off, so that the next run
        records planned vs actual."""
        from synth_pipelines.llm.config import ProfileError
        from synth_pipelines.planning.forecast import plan_domain, save_plan

        if target_count is not None and target_count < 1:
            raise ServiceError("target_count must be at least 1", field="target_count")
        resolved = self.resolved_spec(domain)
        try:
            client = self.llm_resource().client(self.warehouse.cache_path)
            forecast = plan_domain(
                resolved, self.warehouse, client, target_count=target_count, seed_count=seed_count
            )
        except ProfileError as e:
            raise ServiceError(str(e), field="profile") from None
        except ValueError as e:
            raise ServiceError(f"planning {domain!r}: {e}", field="domain") from None
        if save:
            save_plan(self.warehouse, forecast)
        return forecast

    def search(self, domain: str, query: str, *, k: int = 10, exact: bool = False) -> SearchResult:
        """The ``k`` accepted examples nearest to ``query`` (see :mod:`synth_pipelines.warehouse.search`)."""
        from synth_pipelines.llm.embeddings import embed_texts

        domain = self.domain_name(domain)
        try:
            return search(
                self.warehouse,
                domain,
                query,
                lambda texts: embed_texts(list(texts), cache_path=self.warehouse.embedding_cache_path),
                k=k,
                exact=exact,
            )
        except SearchError as e:
            if "no example_embeddings" in str(e):
                raise NotFound(str(e), field="domain") from None
            raise ServiceError(str(e), field="k" if "k must" in str(e) else "q") from None

    def export_lines(
        self, domain: str, fmt: Literal["sft", "dpo", "qa", "grpo-verifiable", "retrieval"]
    ) -> Iterator[str]:
        """A training export as JSONL lines (the same rows ``synth export`` writes)."""
        from synth_pipelines.exports.training import export_rows

        domain = self.domain_name(domain)
        spec = self.warehouse.materialized_spec(domain)
        if spec is None:
            raise NotFound(
                f"domain {domain!r} has not been generated yet; launch a run first", field="domain"
            )
        try:
            rows, _, _ = export_rows(self.warehouse, spec, fmt)
        except ValueError as e:
            raise NotFound(str(e), field="domain") from None
        return (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)

    def spec_text(self, domain: str) -> str:
        return self.spec_file(domain).read_text(encoding="utf-8")

    def dataset_card(self, domain: str) -> str:
        """The domain's dataset card (as ``synth export`` writes it, for the spec's format)."""
        from synth_pipelines.exports.training import dataset_card_text

        domain = self.domain_name(domain)
        spec = self.warehouse.materialized_spec(domain)
        if spec is None:
            raise NotFound(
                f"domain {domain!r} has not been generated yet; launch a run first", field="domain"
            )
        try:
            return dataset_card_text(self.warehouse, spec)
        except ValueError as e:
            raise NotFound(str(e), field="domain") from None
