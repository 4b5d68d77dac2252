"""The service's local operations: what runs in this process against the warehouse, the specs folder
and the models (spec files, in-process generation, validation of a file, calibration, training, the
strategy benchmark, the model doctor, status, exports and outcomes).

:class:`SynthService` gets them from :class:`LocalOperations`; the CLI, the REST API and the MCP
tools call them there and only print or serialize what they return. Every failure is a
:class:`ServiceError` whose message names the file, field or model and says what to do.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from synth_pipelines.learning.outcomes import IngestReport, record_outcomes
from synth_pipelines.llm.config import ProfileError, ProviderProfile, profile_path
from synth_pipelines.service.models import BadInput, Conflict, NotFound, ServiceError, ServiceSettings
from synth_pipelines.spec.loading import TEMPLATES_DIR, discover_specs, load_spec, parse_spec
from synth_pipelines.spec.model import SpecError
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.validation.calibration import (
    Agreement,
    DomainCalibration,
    ResolvedSpec,
    ReviewCalibration,
    resolved_spec,
)
from synth_pipelines.validation.review import ReviewItem, ReviewProgress
from synth_pipelines.warehouse.progress import ProgressSnapshot, running
from synth_pipelines.warehouse.status import domain_status
from synth_pipelines.warehouse.storage import (
    REVIEW_CALIBRATION_FILE,
    TRAINED_FILE,
    TRAINED_SCORE_FILE,
    StorageError,
    Warehouse,
    read_rows_file,
    storage_location,
)

if TYPE_CHECKING:
    from synth_pipelines.exports.training import ExportResult
    from synth_pipelines.llm.doctor import ModelCheck
    from synth_pipelines.resources import LLMResource
    from synth_pipelines.strategy_benchmark import BenchmarkReport
    from synth_pipelines.validation.review import LabelIn


# What a reviewer sees rows of.
REVIEWED_TABLES = ("validated_examples", "rejected_examples")


class Generated(BaseModel):
    """One in-process materialization of a domain's graph."""

    summary: str
    success: bool
    error: str | None = None


class FileValidation(BaseModel):
    """The per-row report of ``synth validate`` and where it was written."""

    report: dict[str, Any]
    report_file: Path


class CalibrationRun(BaseModel):
    """``synth calibrate``'s findings and the profile block they give."""

    profile: str
    per_file: list[DomainCalibration]
    pooled: Agreement
    fields: Agreement | None  # the cross-field agreement minimum, None when it adds nothing
    diversity_reached: dict[str, float] = {}
    block: dict[str, Any]
    saved_to: Path | None = None


class Trained(BaseModel):
    """A user's DSPy module trained and scored held out (``synth train``)."""

    program: Path
    class_name: str
    inputs: list[str]
    outputs: list[str]
    # learning.program.ProgramScore: typed loosely so that importing the CLI does not import DSPy.
    score: Any
    state_file: Path
    source: str


class ReviewQueue(BaseModel):
    """Rows for one reviewer to label next, and how far they are."""

    domain: str
    items: list[ReviewItem]
    progress: ReviewProgress


class StatusView(BaseModel):
    """Per-domain figures (``warehouse.status``) and the runs in progress."""

    rows: list[dict[str, Any]]
    live: list[ProgressSnapshot]


class LocalOperations:
    """Operations that run here, mixed into :class:`SynthService` (which provides ``settings`` and
    ``warehouse``)."""

    settings: ServiceSettings
    warehouse: Warehouse

    # ------------------------------------------------------------------ specs and models
    def safe_name(self, domain: str) -> str:
        """``domain`` checked as a name only (for data already in the warehouse)."""
        try:
            return validate_domain_name(domain)
        except UnsafeDomainError as e:
            raise BadInput(str(e), field="domain") from None

    def domain_name(self, domain: str) -> str:
        """A safe name with a spec in the specs folder: BadInput (exit 2, HTTP 400) for an unsafe
        name, NotFound naming the known domains otherwise."""
        domain = self.safe_name(domain)
        known = discover_specs(self.settings.schemas_dir)
        if domain not in known:
            raise NotFound(
                f"domain {domain!r} has no spec in {self.settings.schemas_dir}; known: "
                f"{', '.join(sorted(known)) or 'none'}. Create one with `synth schema new {domain}`",
                field="domain",
            )
        return domain

    def spec_file(self, domain: str) -> Path:
        return Path(self.settings.schemas_dir) / f"{self.domain_name(domain)}.yaml"

    def llm_resource(self) -> LLMResource:
        from synth_pipelines.resources import LLMResource  # Dagster loads with the first model call

        return LLMResource(
            profile=self.settings.profile, api_key=os.environ.get("SYNTH_OPENAI_API_KEY") or None
        )

    def provider_profile(self) -> ProviderProfile:
        try:
            return self.llm_resource().load_profile()
        except ProfileError as e:
            raise ServiceError(str(e), field="profile") from None

    def resolved_spec(self, domain: str) -> ResolvedSpec:
        """The domain's spec as a run uses it: loaded and resolved against the domain's review
        calibration or the profile, exactly as ``domain_schema`` stores it
        (``validation.calibration.resolved_spec``)."""
        from synth_pipelines.validation.calibration import read_review_calibration

        path = self.spec_file(domain)
        profile = self.provider_profile()
        try:
            return resolved_spec(path, profile, read_review_calibration(self.warehouse, path.stem))
        except SpecError as e:
            raise ServiceError(str(e), field="domain") from None

    def example_spec(self, domain: str) -> ResolvedSpec:
        """:meth:`resolved_spec` for a domain of examples (row validation does not apply to the
        statistical types)."""
        resolved = self.resolved_spec(domain)
        if resolved.spec.statistical:
            raise ServiceError(
                f"{domain!r} is a {resolved.spec.type} domain: row validation applies to example domains; "
                f"a {resolved.spec.type} domain is checked by its generator's recovery check "
                "(statistical_data)",
                field="domain",
            )
        return resolved

    def spec_templates(self) -> list[tuple[str, str]]:
        """(template name, description) for every spec template."""
        return [
            (path.stem, str(yaml.safe_load(path.read_text()).get("description", "")))
            for path in sorted(TEMPLATES_DIR.glob("*.yaml"))
        ]

    def new_spec(self, domain: str, template: str, *, force: bool = False) -> Path:
        """Write ``<schemas>/<domain>.yaml`` from a template (which must stay a valid spec)."""
        domain = self.safe_name(domain)
        source = TEMPLATES_DIR / f"{template}.yaml"
        if not source.is_file():
            known = ", ".join(name for name, _ in self.spec_templates())
            raise BadInput(f"unknown template {template!r}; choose one of: {known}", field="type")
        target = Path(self.settings.schemas_dir) / f"{domain}.yaml"
        if target.exists() and not force:
            raise ServiceError(f"{target} exists; pass --force to overwrite", field="domain")
        text = source.read_text()
        text = text.replace(f"domain: {yaml.safe_load(text)['domain']}", f"domain: {domain}", 1)
        parse_spec(yaml.safe_load(text), path=target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def check_spec(self, file: Path) -> str:
        """A one-line summary of a valid spec file, or a ServiceError listing every problem."""
        try:
            spec = load_spec(file).spec
        except SpecError as e:
            raise ServiceError(str(e), field="file") from None
        cells = 1
        for values in spec.matrix.dimensions.values():
            cells *= len(values)
        return (
            f"{file}: valid {spec.type} spec '{spec.name}' v{spec.version_str}, {len(spec.fields)} fields, "
            f"{cells * len(spec.matrix.complexity)} matrix cells, target {spec.target_count}, "
            f"training format {spec.training_format}"
            + (f", {len(spec.rules)} rule(s) run on sample rows without error" if spec.rules else "")
        )

    def doctor(self) -> list[ModelCheck]:
        """Call each model of the profile once (see :mod:`synth_pipelines.llm.doctor`)."""
        from synth_pipelines.llm.client import run_sync
        from synth_pipelines.llm.doctor import check_models

        try:
            client = self.llm_resource().client(self.warehouse.cache_path)
        except ProfileError as e:
            raise ServiceError(str(e), field="profile") from None
        return run_sync(check_models(dict(client.profile.models), client.backends, client.modes))

    # ------------------------------------------------------------------ generation
    def generate(self, domain: str, *, count: int | None = None, report: Path | None = None) -> Generated:
        """Materialize the whole graph for ``domain`` in this process (on the instance of
        ``DAGSTER_HOME`` when set, so the UI shows the run; an ephemeral one otherwise)."""
        from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
        from synth_pipelines.runner import (
            current_instance,
            failure_messages,
            materialize_domain,
            run_report,
            summarize,
        )

        domain = self.domain_name(domain)
        wh = self.warehouse
        resources = {
            "warehouse": WarehouseResource(
                root=str(wh.root), state_dir=str(wh.state_dir), schemas_dir=self.settings.schemas_dir
            ),
            "llm": LLMResource(profile=self.settings.profile),
            "embedder": EmbedderResource(),
        }
        instance = current_instance()
        started = datetime.now(UTC).timestamp()
        result = materialize_domain(domain, instance=instance, target_count=count, resources=resources)
        elapsed = datetime.now(UTC).timestamp() - started
        if report is not None:
            report.write_text(json.dumps(run_report(domain, instance, result, elapsed), indent=2))
        error = None
        if not result.success:
            messages = failure_messages(result)
            error = "; ".join(m.strip().splitlines()[0] for m in messages if m) or "the run failed"
        return Generated(summary=summarize(domain, result, wh, elapsed), success=result.success, error=error)

    # ------------------------------------------------------------------ quality
    def validate(self, domain: str, rows: list[dict[str, Any]], *, models: bool = True) -> dict[str, Any]:
        """Per-row verdicts of the domain's gates (rules, dedup, field agreement and, with
        ``models``, the panel), at the thresholds a run of the domain would use."""
        return self._validate_rows(self.example_spec(domain), rows, models=models)

    def _validate_rows(
        self, resolved: ResolvedSpec, rows: list[dict[str, Any]], *, models: bool
    ) -> dict[str, Any]:
        from synth_pipelines.llm.embeddings import embed_texts
        from synth_pipelines.validation.external import validate_rows

        client = self.llm_resource().client(self.warehouse.cache_path) if models else None
        return validate_rows(resolved.spec, rows, client, embed_texts)

    def validate_file(
        self, file: Path, domain: str, *, models: bool = True, report: Path | None = None
    ) -> FileValidation:
        """Validate a JSONL or Parquet file of examples and write the JSON report next to it."""
        self.safe_name(domain)
        if not file.is_file():
            raise ServiceError(f"{file} does not exist", field="file")
        resolved = self.example_spec(domain)
        if file.suffix not in (".jsonl", ".parquet"):
            raise ServiceError(f"{file}: expected a .jsonl or .parquet file", field="file")
        result = self._validate_rows(resolved, read_rows_file(file), models=models)
        out = report or file.with_name(f"{file.stem}.validation.json")
        out.write_text(json.dumps(result, indent=2, default=str))
        return FileValidation(report=result, report_file=out)

    def calibrate(
        self,
        labels: list[Path] | None,
        *,
        domain: str | None = None,
        diversity: bool = False,
        save: Path | None = None,
    ) -> CalibrationRun | ReviewCalibration:
        """Score labelled files with the rules, the on-topic similarity and the panel; the
        thresholds that agree best with the labels, as the profile's ``roles.calibration`` block.
        With no files and a ``domain``: the domain's own review labels (:meth:`calibrate_domain`)."""
        if not labels:
            if domain is None:
                raise BadInput(
                    "give labelled JSONL files, or --domain to use its review labels", field="labels"
                )
            return self.calibrate_domain(domain)
        from synth_pipelines.llm.embeddings import embed_texts, pair_similarity
        from synth_pipelines.validation.calibration import (
            LabelledFileError,
            diversity_calibration,
            field_agreement_threshold,
            load_labelled,
            panel_kappa_gain,
        )
        from synth_pipelines.validation.calibration import calibrate as run_calibration

        profile = self.provider_profile()
        sets = []
        for file in labels:
            name = self.safe_name(domain or file.stem)
            try:
                spec = self.resolved_spec(name).spec
                rows = load_labelled(file)
            except LabelledFileError as e:
                raise ServiceError(str(e), field="labels") from None
            sets.append((spec, str(file), rows))
        client = self.llm_resource().client(self.warehouse.cache_path)
        results, pooled = run_calibration(
            sets, client, list(profile.roles.validators), pair_similarity, embed_texts
        )
        fields = field_agreement_threshold(results)
        block: dict[str, Any] = {
            "consensus_threshold": pooled.threshold,
            "on_topic_threshold": pooled.on_topic_threshold,
            "kappa": pooled.kappa,
            "accuracy": pooled.accuracy,
            "panel_kappa_gain": panel_kappa_gain(results),
            "field_agreement_threshold": round(fields.threshold or 0.0, 4) if fields else -1.0,
            "rows": pooled.rows,
            "labelled_sets": [str(f) for f in labels],
            "measured": f"synth calibrate, {datetime.now(UTC).date().isoformat()}",
        }
        reached: dict[str, float] = {}
        if diversity:
            reached, threshold = diversity_calibration(self.warehouse)
            if not reached:
                raise ServiceError(
                    "--diversity: no domain in the warehouse has example_embeddings yet; generate some first",
                    field="diversity",
                )
            block["diversity_threshold"] = threshold
        run = CalibrationRun(
            profile=profile.name,
            per_file=results,
            pooled=pooled,
            fields=fields,
            diversity_reached=reached,
            block={"calibration": block},
        )
        if save is not None:
            data = yaml.safe_load(profile_path(self.settings.profile).read_text())
            data.setdefault("roles", {})["calibration"] = block
            save.write_text(yaml.safe_dump(data, sort_keys=False))
            run.saved_to = save
        return run

    def train(
        self,
        program: Path,
        domain: str,
        *,
        module: str | None = None,
        metric: str | None = None,
        optimizer: str | None = None,
        iterations: int | None = None,
        train_fraction: float | None = None,
        output: Path | None = None,
    ) -> Trained:
        """Train the user's DSPy module on the domain's validated examples, score it held out, save
        its state and record the score in ``agent_performance`` (source ``train:<file stem>``)."""
        from synth_pipelines.learning.outcomes import record_performance
        from synth_pipelines.learning.program import (
            PROVIDER_ERRORS,
            example_rows,
            performance_row,
            program_threads,
            save_program,
        )
        from synth_pipelines.learning.train import TrainError, train_user_program
        from synth_pipelines.resources import EmbedderResource

        name = self.safe_name(domain)
        wh = self.warehouse
        spec = wh.materialized_spec(name)
        table = wh.read_partition("validated_examples", name)
        if spec is None or table is None:
            raise NotFound(
                f"domain {name!r} has no validated examples in {wh.root}; run synth generate --domain {name}",
                field="domain",
            )
        rows = example_rows(table.select(["example_id", "cell_id", "example_json"]).to_pydict())
        embedder = EmbedderResource()
        try:
            client = self.llm_resource().client(wh.cache_path)
            user, run = train_user_program(
                spec,
                rows,
                client,
                program,
                embed=lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path),
                class_name=module,
                metric=metric,
                optimizer=optimizer,
                iterations=iterations,
                train_fraction=train_fraction,
                threads=program_threads(client),
            )
        except (TrainError, ProfileError) as e:
            raise ServiceError(str(e), field="program") from None
        except ValueError as e:
            raise ServiceError(f"training on {name!r}: {e}") from None
        except PROVIDER_ERRORS as e:
            raise ServiceError(
                f"training on {name!r}: {e}. Replies so far are cached; rerun to resume."
            ) from None
        score = run.score
        target = (
            output if output is not None else wh.root / TRAINED_FILE.format(domain=name, program=user.name)
        )
        save_program(run.compiled, target)
        wh.write_json(
            TRAINED_SCORE_FILE.format(domain=name, program=user.name),
            {
                **score.model_dump(),
                "program": str(program),
                "module": user.cls.__name__,
                "state": str(target),
            },
        )
        run_id = f"train-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        record_performance(wh, performance_row(name, f"train:{user.name}", run_id, score))
        return Trained(
            program=program,
            class_name=user.cls.__name__,
            inputs=list(user.inputs),
            outputs=list(user.outputs),
            score=score,
            state_file=Path(str(target)),
            source=f"train:{user.name}",
        )

    def benchmark(
        self,
        domain: str,
        strategies: str | list[str],
        *,
        count: int = 16,
        strategies_file: Path | None = None,
        compare: Path | None = None,
        labelled: Path | None = None,
        workdir: Path = Path("benchmark_runs"),
        output: Path | None = None,
    ) -> tuple[BenchmarkReport, BenchmarkReport | None]:
        """Run generation strategies side by side (see :mod:`synth_pipelines.strategy_benchmark`);
        the report (also written to ``output`` as JSON) and, with ``compare``, the earlier report
        it is shown against."""
        from synth_pipelines.strategy_benchmark import (
            BenchmarkError,
            load_report,
            load_strategies,
            run_benchmark,
        )

        name = self.safe_name(domain)
        if isinstance(strategies, str):  # "single-model,multi-model"
            strategies = [s.strip() for s in strategies.split(",") if s.strip()]
        try:
            load_spec(Path(self.settings.schemas_dir) / f"{name}.yaml")
            chosen = load_strategies(strategies, strategies_file)
            baseline = load_report(compare) if compare is not None else None
        except (SpecError, BenchmarkError) as e:
            raise ServiceError(str(e), field="strategies") from None
        default_labels = Path("tests/data/labelled") / f"{name}.jsonl"
        labels = labelled if labelled is not None else (default_labels if default_labels.is_file() else None)
        try:
            report = run_benchmark(
                name,
                chosen,
                count=count,
                schemas=Path(self.settings.schemas_dir),
                profile=self.settings.profile,
                workdir=workdir,
                labelled=labels,
            )
        except (ProfileError, BenchmarkError) as e:
            raise ServiceError(str(e)) from None
        if output is not None:
            output.write_text(report.model_dump_json(indent=2))
        return report, baseline

    # ------------------------------------------------------------------ review
    def calibrate_domain(self, domain: str) -> ReviewCalibration:
        """Calibrate the domain's gate on its review labels and keep the result in the warehouse;
        with ``MIN_REVIEW_LABELS`` or more, its runs use these thresholds for every ``auto`` one."""
        from synth_pipelines.llm.embeddings import embed_texts, pair_similarity
        from synth_pipelines.validation.calibration import calibrate_domain
        from synth_pipelines.validation.review import current_labels, labelled_rows, read_labels

        domain = self.domain_name(domain)
        items = self._review_items(domain)
        labels = current_labels(read_labels(self.warehouse, domain), items)
        if len(labels) < 2 or len({label["label"] for label in labels}) < 2:
            raise ServiceError(
                f"{domain!r} has {len(labels)} review label(s) for its current rows; label good and bad "
                f"rows at /review/{domain} (synth serve) first",
                field="domain",
            )
        spec = self.resolved_spec(domain).spec
        profile = self.provider_profile()
        client = self.llm_resource().client(self.warehouse.cache_path)
        result = calibrate_domain(
            spec,
            labelled_rows(labels, items),
            [label["reviewer"] for label in labels],
            client,
            list(profile.roles.validators),
            pair_similarity,
            embed_texts,
        )
        self.warehouse.write_json(
            REVIEW_CALIBRATION_FILE.format(domain=domain), result.model_dump(mode="json")
        )
        return result

    def _review_items(self, domain: str) -> list[ReviewItem]:
        """The domain's reviewable rows, rebuilt only when its Parquet files change: the page asks for
        them on every label, and building 100,000 rows takes seconds."""
        from synth_pipelines.validation.review import review_items

        domain = self.safe_name(domain)
        stamp = (str(self.warehouse.root), *(self._file_stamp(a, domain) for a in REVIEWED_TABLES))
        cache: dict[str, tuple[tuple[Any, ...], list[ReviewItem]]] = self.__dict__.setdefault(
            "_review_cache", {}
        )
        hit = cache.get(domain)
        if hit is not None and hit[0] == stamp and None not in stamp:
            return hit[1]
        validated = self.warehouse.read_partition("validated_examples", domain)
        if validated is None:
            raise NotFound(
                f"domain {domain!r} has no validated examples in {self.warehouse.root} to review; "
                f"run `synth generate --domain {domain}` first",
                field="domain",
            )
        rejected = self.warehouse.read_partition("rejected_examples", domain)
        items = review_items(validated.to_pylist(), rejected.to_pylist() if rejected is not None else [])
        cache[domain] = (stamp, items)
        return items

    def _file_stamp(self, asset: str, domain: str) -> tuple[float, int] | None:
        """(modification time, size) of a partition file; None when unknown (then nothing is cached)."""
        try:
            info = self.warehouse.partition_file(asset, domain).stat()
            return (float(info.st_mtime), int(info.st_size))
        except (OSError, NotImplementedError, KeyError, AttributeError):
            return None

    def review_queue(self, domain: str, *, count: int = 20, reviewer: str = "reviewer") -> ReviewQueue:
        """Rows for ``reviewer`` to label, stratified over cells, consensus bands and rejection
        stages, nearest the threshold first, never one they labelled (``validation/review.py``)."""
        from synth_pipelines.validation.review import current_labels, progress, read_labels, review_queue

        if not 1 <= count <= 500:
            raise BadInput("count must be between 1 and 500", field="count")
        reviewer = self._reviewer(reviewer)
        items = self._review_items(domain)
        labels = read_labels(self.warehouse, domain)
        done = {
            (label["example_id"], label["content_hash"])
            for label in current_labels(labels, items)
            if label["reviewer"] == reviewer
        }
        return ReviewQueue(
            domain=domain, items=review_queue(items, done, count), progress=progress(reviewer, labels, items)
        )

    def record_label(self, domain: str, label: LabelIn) -> ReviewProgress:
        """Store one reviewer's label of a row, checked against the row as it is now: an unknown
        example is a 404, a content hash that is not the row's current content a 409."""
        from synth_pipelines.validation.review import progress, read_labels, record_label

        items = {item.example_id: item for item in self._review_items(domain)}
        item = items.get(label.example_id)
        if item is None:
            raise NotFound(
                f"domain {domain!r} has no example {label.example_id!r} to label", field="example_id"
            )
        if item.content_hash != label.content_hash:
            raise Conflict(
                f"example {label.example_id!r} is not the content that was shown (it was regenerated, or the "
                "hash was altered); reload the queue and label it again",
                field="content_hash",
            )
        record_label(self.warehouse, domain, label, item)
        return progress(label.reviewer, read_labels(self.warehouse, domain), list(items.values()))

    @staticmethod
    def _reviewer(name: str) -> str:
        from synth_pipelines.validation.review import REVIEWER_PATTERN

        if not REVIEWER_PATTERN.match(name):
            raise BadInput("a reviewer name is letters, digits and _ . @ - (at most 64)", field="reviewer")
        return name

    # ------------------------------------------------------------------ data
    def status(self) -> StatusView:
        """Per-domain counts, pass rate, diversity, program score and last run, plus runs in progress."""
        wh = self.warehouse
        view = StatusView(rows=domain_status(wh), live=running(wh.progress_path("status").parent))
        if not view.rows and not view.live:
            raise ServiceError(f"nothing materialized under {wh.root} yet; run `synth generate --domain ...`")
        return view

    def export(self, domain: str, out: str, fmt: str | None = None) -> ExportResult:
        """Write a training export (Parquet, JSONL) and its dataset card to a folder or fsspec URL."""
        from synth_pipelines.exports.training import FORMATS, build_export

        domain = self.safe_name(domain)
        try:
            out_dir = storage_location(out)
        except StorageError as e:
            raise BadInput(f"--out: {e}", field="out") from None
        # The spec the data was validated with (thresholds resolved), not today's YAML.
        spec = self.warehouse.materialized_spec(domain)
        if spec is None:
            raise NotFound(
                f"{domain!r} has not been generated in {self.warehouse.root}; "
                f"run `synth generate --domain {domain}`",
                field="domain",
            )
        chosen = fmt or spec.training_format
        if chosen not in FORMATS:
            raise BadInput(
                f"format {chosen!r} is not exportable; choose one of {', '.join(FORMATS)}", field="format"
            )
        try:
            return build_export(self.warehouse, spec, chosen, out_dir)  # type: ignore[arg-type]
        except (ValueError, StorageError) as e:
            raise ServiceError(str(e)) from None

    def record_outcome(
        self,
        domain: str,
        success: bool,
        *,
        outcome_id: str | None = None,
        cell_id: str | None = None,
        tags: list[str] | None = None,
        agent: str = "cli",
    ) -> IngestReport:
        """Record one agent outcome (a generated id when none is given)."""
        now = datetime.now(UTC)
        row = {
            "outcome_id": outcome_id or f"{agent}-{now.strftime('%Y%m%dT%H%M%S%f')}",
            "domain": domain,
            "cell_id": cell_id,
            "tags": tags or [],
            "success": success,
            "recorded_at": now,
            "agent": agent,
        }
        return self.record_outcomes([row])

    def record_outcomes(self, rows: list[dict[str, Any]]) -> IngestReport:
        """Validate and store agent outcomes for the feedback loop; bad rows are listed with why."""
        return record_outcomes(
            self.warehouse, rows, known_domains=set(discover_specs(self.settings.schemas_dir))
        )

    def ingest_outcome_files(self, files: list[Path]) -> list[tuple[Path, IngestReport]]:
        """Record the outcomes of JSONL or Parquet files, file by file."""
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise ServiceError(f"{missing[0]} does not exist", field="files")
        return [(path, self.record_outcomes(read_rows_file(path))) for path in files]
