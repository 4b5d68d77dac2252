"""Text for a terminal: what the CLI prints for each operation's result. Formatting only; the
operations themselves are in :mod:`synth_pipelines.service.operations` and ``tasks``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synth_pipelines.service.tasks import CalibrationRun
from synth_pipelines.warehouse.progress import read_progress
from synth_pipelines.warehouse.storage import INDEX_FILE, PROGRAM_FILE, SPEC_FILE, StoragePath, Warehouse

if TYPE_CHECKING:  # the result types; their modules load with the command that needs them
    from synth_pipelines.exports.training import ExportResult
    from synth_pipelines.learning.outcomes import IngestReport
    from synth_pipelines.llm.doctor import ModelCheck
    from synth_pipelines.planning.forecast import Plan
    from synth_pipelines.service.tasks import CalibrationRun, FileValidation, ReviewQueue, StatusView, Trained
    from synth_pipelines.strategy_benchmark import BenchmarkReport
    from synth_pipelines.validation.calibration import ReviewCalibration
    from synth_pipelines.warehouse.search import SearchResult


# ------------------------------------------------------------------------------------------ generate


@contextmanager
def progress_bar(wh: Warehouse, domain: str, steps: list[str]) -> Iterator[None]:
    """A live bar while the block runs: which assets of the domain have been written since it
    started (files are the truth), and for the running one its own report (rows, rows/s, tokens,
    dollars so far, ETA)."""
    done = threading.Event()
    started = time.time()
    poller = threading.Thread(target=_poll, args=(wh, domain, steps, started, done), daemon=True)
    poller.start()
    try:
        yield
    finally:
        done.set()
        poller.join(5)


def _poll(wh: Warehouse, domain: str, steps: list[str], started: float, done: threading.Event) -> None:
    from rich.progress import BarColumn, Progress, TextColumn

    outputs = {
        "domain_schema": wh.file(SPEC_FILE, domain),
        "compiled_program": wh.file(PROGRAM_FILE, domain),
        "example_index": wh.file(INDEX_FILE, domain),
    }

    def finished() -> list[str]:
        return [s for s in steps if _written_since(outputs.get(s) or wh.partition_file(s, domain), started)]

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"{domain}: starting", total=len(steps))
        while not done.is_set():
            written = finished()
            current = next((s for s in steps if s not in written), "done")
            live = read_progress(wh.progress_path(domain))
            extra = ""
            if (
                live is not None
                and live.asset == current
                and live.updated_at >= started
                and not live.finished
            ):
                extra = f"  {live.line()}"
            progress.update(task, completed=len(written), description=f"{domain}: {current}{extra}")
            # An object store is polled over the network: less often than a local disk.
            done.wait(2.0 if wh.is_remote else 0.5)
        progress.update(task, completed=len(finished()), description=f"{domain}: finished")


def _written_since(path: StoragePath, started: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime >= started - 1
    except (OSError, NotImplementedError, KeyError):  # a store without modification times: not known yet
        return False


# ------------------------------------------------------------------------------------------ results


def created(target: Path, template: str) -> str:
    return (
        f"created {target} from the {template} template; edit fields, matrix and seed_problems, then "
        f"`synth schema validate {target}`"
    )


def validation(result: FileValidation) -> str:
    s = result.report["summary"]
    return (
        f"{s['passed']}/{s['rows']} rows pass ({s['pass_rate']:.0%}); rejected by stage: "
        f"{s['rejected_by_stage'] or 'none'}; report: {result.report_file}"
    )


def calibration(run: CalibrationRun | ReviewCalibration) -> str:
    if not isinstance(run, CalibrationRun):
        return review_calibration(run)
    lines = []
    for r in run.per_file:
        lines += [
            f"{r.domain} ({r.file}): best {r.best.summary()}",
            f"  with the on-topic gate: {r.best_with_on_topic.summary()}",
            f"  rules alone: {r.rules_only.summary()}",
        ]
    lines.append(f"all sets: best {run.pooled.summary()}")
    lines.append(
        f"cross-field agreement: {run.fields.summary()}"
        if run.fields
        else "cross-field agreement: no gain, gate off"
    )
    lines += [f"diversity reached by the generator on {n}: {v:.3f}" for n, v in run.diversity_reached.items()]
    lines.append(
        f"\n# under roles: in the profile {run.profile!r}\n" + yaml.safe_dump(run.block, sort_keys=False)
    )
    if run.saved_to is not None:
        lines.append(
            f"calibrated profile written to {run.saved_to}; use it with SYNTH_PROFILE={run.saved_to}"
        )
    return "\n".join(lines)


def review_calibration(run: ReviewCalibration) -> str:
    from synth_pipelines.validation.calibration import MIN_REVIEW_LABELS

    def at(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    use = (
        "its runs now use these thresholds for every `auto` one (rerun the domain)"
        if run.usable
        else f"fewer than {MIN_REVIEW_LABELS} labels: its runs keep the profile's thresholds"
    )
    return (
        f"{run.domain}: {run.labels} review labels by {', '.join(run.reviewers)}\n"
        f"  consensus_threshold {at(run.consensus_threshold)}, "
        f"on_topic_threshold {at(run.on_topic_threshold)}, "
        f"field_agreement_threshold {at(run.field_agreement_threshold)}\n"
        f"  kappa {run.kappa:.3f} (95% CI {run.kappa_low:.3f} to {run.kappa_high:.3f}), accuracy "
        f"{run.accuracy:.1%}; the panel adds kappa {run.panel_kappa_gain:+.3f} over the rules\n"
        f"  {use}"
    )


def trained(run: Trained) -> str:
    score = run.score
    interval = f" (95% CI {score.ci_low:.3f}-{score.ci_high:.3f})" if score.ci_low is not None else ""
    return (
        f"{run.class_name} from {run.program}: inputs {run.inputs} -> outputs {run.outputs}\n"
        f"{score.optimizer}, trained on {score.n_train}, held-out {score.metric} {score.score:.3f}{interval} "
        f"over {score.n_eval} examples ({score.parse_failures} unparsable), {score.lm_calls} model calls\n"
        f"saved: {run.state_file}\nrecorded in agent_performance as {run.source}"
    )


def benchmark(report: BenchmarkReport, baseline: BenchmarkReport | None, saved_to: Path | None = None) -> str:
    from synth_pipelines.strategy_benchmark import render_report

    return render_report(report, baseline) + (f"\nreport written to {saved_to}" if saved_to else "")


def plan(forecast: Plan, as_json: bool) -> str:
    from synth_pipelines.planning.forecast import render_plan

    if as_json:
        return json.dumps({**forecast.model_dump(mode="json"), "totals": forecast.summary()}, indent=2)
    return render_plan(forecast)


def doctor(reports: list[ModelCheck]) -> str:
    from synth_pipelines.llm.doctor import render as render_checks

    return render_checks(reports)


def doctor_failures(reports: list[ModelCheck]) -> str:
    failed = [r.model for r in reports if not r.ok]
    return f"{len(failed)} of {len(reports)} model(s) not usable: {', '.join(failed)}"


def status(view: StatusView) -> str:
    lines = [f"in progress: {snap.domain} {snap.asset}: {snap.line()}" for snap in view.live]
    if view.rows:
        lines.append(
            f"{'domain':<22}{'generated':>10}{'accepted':>10}{'pass':>7}"
            f"{'diversity':>11}{'program':>9}  last run"
        )
        lines += [
            f"{r['domain']:<22}{r['generated']:>10}{r['accepted']:>10}{_pct(r['pass_rate']):>7}"
            f"{_num(r['diversity']):>11}{_num(r['program_score']):>9}  {r['last_run'] or '-'}"
            for r in view.rows
        ]
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def export(result: ExportResult) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in result.splits.items()) or "empty"
    return f"{result.rows} rows ({splits}) -> {result.parquet}, {result.jsonl}; card {result.card}"


def outcomes(report: IngestReport, source: str | None = None) -> str:
    return f"{source}: {report.summary()}" if source else report.summary()


def search(result: SearchResult, as_json: bool) -> str:
    if as_json:
        return result.model_dump_json(indent=2)
    lines = [f"{len(result.hits)} of {result.searched} examples ({result.method} search)"]
    for rank, hit in enumerate(result.hits, start=1):
        consensus = "-" if hit.consensus is None else f"{hit.consensus:.2f}"
        text = json.dumps(hit.example, ensure_ascii=False)
        lines.append(
            f"{rank:>3}. {hit.similarity:.3f}  consensus {consensus}  {hit.example_id}  {text[:160]}"
        )
    return "\n".join(lines)


def review(queue: ReviewQueue, as_json: bool) -> str:
    if as_json:
        return queue.model_dump_json(indent=2)
    p = queue.progress
    lines = [
        f"{queue.domain}: {len(queue.items)} rows for {p.reviewer} ({p.labelled} labelled, "
        f"{p.queued} to go); label them in the browser: synth serve, then "
        f"http://127.0.0.1:8000/review/{queue.domain}"
    ]
    for item in queue.items:
        gate = "accepted" if item.verdict == "accepted" else f"rejected ({item.stage})"
        consensus = "-" if item.consensus is None else f"{item.consensus:.2f}"
        text = json.dumps(item.example, ensure_ascii=False)
        lines.append(f"  {item.example_id}  {gate:<24} consensus {consensus}  {text[:120]}")
    return "\n".join(lines)
