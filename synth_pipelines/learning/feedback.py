"""The feedback loop: when to regenerate a domain, aimed at which cells, and what it added.

:func:`decide` is pure and deterministic given (success rates, specs, state, runs in flight, now),
so the sensor is a thin shell around it and the loop can be simulated in tests.

What a regeneration adds to its weak cells is recorded per domain and cell in the warehouse
(``feedback_targets``, Parquet + DuckDB mirror) by :func:`record_feedback_targets`, so that every
later run of ``problem_matrix`` keeps those examples: the matrix is a function of the spec plus the
recorded feedback, not of one run's config.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from synth_pipelines.learning.outcomes import SuccessRate
from synth_pipelines.spec.model import FeedbackSpec
from synth_pipelines.warehouse.storage import Warehouse

FEEDBACK_TARGETS = "feedback_targets"
FEEDBACK_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("extra", pa.int64()),
        ("source", pa.string()),  # the run that recorded it (one record per run, however often retried)
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


def feedback_targets(warehouse: Warehouse, domain: str) -> dict[str, int]:
    """Extra examples per cell that feedback has added to ``domain`` so far (summed over episodes)."""
    table = warehouse.read_dataset(FEEDBACK_TARGETS, columns=["domain", "cell_id", "extra"])
    totals: dict[str, int] = {}
    if table is None:
        return totals
    rows = table.filter(pc.equal(table.column("domain"), domain)).to_pydict()
    for cell, extra in zip(rows["cell_id"], rows["extra"], strict=True):
        totals[cell] = totals.get(cell, 0) + int(extra)
    return totals


def record_feedback_targets(warehouse: Warehouse, domain: str, extras: dict[str, int], source: str) -> bool:
    """Record what one feedback episode adds. Idempotent per ``source`` (a retried run records
    nothing twice); returns whether anything was recorded."""
    if not extras:
        return False
    recorded = warehouse.read_dataset(FEEDBACK_TARGETS, columns=["domain", "source"])
    if recorded is not None:
        mine = recorded.filter(pc.equal(recorded.column("domain"), domain))
        if source in set(mine.column("source").to_pylist()):
            return False
    now = datetime.now(UTC)
    table = pa.table(
        {
            "cell_id": pa.array(list(extras), pa.string()),
            "extra": pa.array(list(extras.values()), pa.int64()),
            "source": pa.array([source] * len(extras), pa.string()),
            "recorded_at": pa.array([now] * len(extras), pa.timestamp("us", tz="UTC")),
        }
    )
    warehouse.append_dataset(FEEDBACK_TARGETS, domain, table.cast(FEEDBACK_SCHEMA))
    warehouse.sync_mirror(FEEDBACK_TARGETS, [domain])
    return True


class DomainState(BaseModel):
    armed: bool = True
    episode: int = 0
    last_request_at: datetime | None = None


class Decision(BaseModel):
    domain: str
    action: str  # "regenerate" | "hold" | "ok" | "rearm"
    reason: str
    rate: float | None
    n: int
    weak_cells: list[str] = Field(default_factory=list)
    episode: int = 0

    def log_line(self) -> str:
        rate = "n/a" if self.rate is None else f"{self.rate:.3f}"
        cells = f", weak cells {self.weak_cells}" if self.weak_cells else ""
        return f"{self.domain}: {self.action} — success {rate} over {self.n} outcomes; {self.reason}{cells}"


def weak_cells(rate: SuccessRate, feedback: FeedbackSpec) -> list[str]:
    """Cells with enough outcomes whose success is below the threshold, worst first."""
    cells = [
        (r, cid)
        for cid, (r, n) in rate.per_cell.items()
        if n >= feedback.min_cell_outcomes and r < feedback.success_threshold
    ]
    return [cid for _, cid in sorted(cells)]


def _evaluate(
    cfg: FeedbackSpec, st: DomainState, rate: SuccessRate | None, in_flight: bool, now: datetime
) -> tuple[str, str, list[str]]:
    """(action, reason, weak cells) for one domain; mutates ``st`` when it re-arms or requests."""
    n = rate.n if rate else 0
    value = rate.rate if rate else None
    if in_flight:
        return "hold", "a regeneration run for this domain is still in flight", []
    if value is None or n < cfg.min_outcomes:
        return "hold", f"fewer than {cfg.min_outcomes} outcomes in the window", []
    if not st.armed:
        if value >= cfg.recover_threshold:
            st.armed = True
            return "rearm", f"recovered above {cfg.recover_threshold:.2f}", []
        return (
            "hold",
            f"already regenerated (episode {st.episode}); waiting for recovery above "
            f"{cfg.recover_threshold:.2f}",
            [],
        )
    if value >= cfg.success_threshold:
        return "ok", f"at or above threshold {cfg.success_threshold:.2f}", []
    if st.last_request_at is not None and now - st.last_request_at < timedelta(minutes=cfg.cooldown_minutes):
        return (
            "hold",
            f"below threshold {cfg.success_threshold:.2f} but in cooldown "
            f"({cfg.cooldown_minutes:g} min since the last request)",
            [],
        )
    st.episode += 1
    st.armed = False
    st.last_request_at = now
    return "regenerate", f"below threshold {cfg.success_threshold:.2f}", weak_cells(rate, cfg) if rate else []


def decide(
    rates: dict[str, SuccessRate],
    feedback: dict[str, FeedbackSpec],
    state: dict[str, DomainState],
    in_flight: set[str],
    now: datetime,
) -> tuple[list[Decision], dict[str, DomainState]]:
    """One evaluation for every domain with a spec. Returns the decisions and the next state."""
    decisions: list[Decision] = []
    next_state = {d: s.model_copy() for d, s in state.items()}
    for domain in sorted(feedback):
        st = next_state.setdefault(domain, DomainState())
        rate = rates.get(domain)
        action, reason, cells = _evaluate(feedback[domain], st, rate, domain in in_flight, now)
        decisions.append(
            Decision(
                domain=domain,
                action=action,
                reason=reason,
                rate=rate.rate if rate else None,
                n=rate.n if rate else 0,
                weak_cells=cells,
                episode=st.episode,
            )
        )
    return decisions, next_state
