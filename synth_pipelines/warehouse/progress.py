"""Live progress of the asset a domain is running: rows done, rows per second, tokens, dollars, ETA.

The running asset writes a small JSON file in the state folder at most once a second; ``synth
generate`` draws its progress bar from it and ``synth status`` shows it, whichever process (the CLI,
a Dagster run worker, a multiprocess step) is doing the work. The final figures go into the asset's
materialization metadata.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synth_pipelines.warehouse.storage import atomic_write_text


class ProgressSnapshot(BaseModel):
    asset: str
    domain: str
    done: int
    total: int
    resumed: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    rows_per_s: float | None = None
    eta_s: float | None = None
    finished: bool = False
    updated_at: float = 0.0

    def line(self) -> str:
        """``4,231/10,000 rows · 127 rows/s · 1.2M tokens · $0.4312 · ETA 45s``"""
        parts = [f"{self.done:,}/{self.total:,} rows"]
        if self.rows_per_s:
            parts.append(f"{self.rows_per_s:,.0f} rows/s")
        parts.append(f"{_si(self.tokens)} tokens")
        parts.append(f"${self.cost_usd:.4f}")
        if self.eta_s is not None and not self.finished:
            parts.append(f"ETA {_duration(self.eta_s)}")
        return " · ".join(parts)


class Progress:
    """Thread-safe counter for one asset run, persisted to ``path`` at most every ``interval_s``."""

    def __init__(
        self,
        path: Path,
        *,
        asset: str,
        domain: str,
        total: int,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.asset = asset
        self.domain = domain
        self.total = total
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_write = 0.0
        self.done = 0
        self.resumed = 0
        self.tokens = 0
        self.cost_usd = 0.0

    def advance(
        self, rows: int = 1, *, tokens: int = 0, cost_usd: float = 0.0, resumed: bool = False
    ) -> None:
        with self._lock:
            self.done += rows
            self.resumed += rows if resumed else 0
            self.tokens += tokens
            self.cost_usd += cost_usd
            due = self._clock() - self._last_write >= self.interval_s
        if due:
            self._write(finished=False)

    def snapshot(self, *, finished: bool = False) -> ProgressSnapshot:
        with self._lock:
            elapsed = self._clock() - self._started
            # Rows served from earlier runs arrive at once and say nothing about the pace.
            fresh = self.done - self.resumed
            rate = fresh / elapsed if elapsed > 0 and fresh > 0 else None
            remaining = max(0, self.total - self.done)
            return ProgressSnapshot(
                asset=self.asset,
                domain=self.domain,
                done=self.done,
                total=self.total,
                resumed=self.resumed,
                tokens=self.tokens,
                cost_usd=round(self.cost_usd, 6),
                elapsed_s=round(elapsed, 3),
                rows_per_s=round(rate, 3) if rate else None,
                eta_s=round(remaining / rate, 1) if rate else None,
                finished=finished,
                updated_at=time.time(),
            )

    def finish(self) -> ProgressSnapshot:
        return self._write(finished=True)

    def _write(self, *, finished: bool) -> ProgressSnapshot:
        snap = self.snapshot(finished=finished)
        with self._lock:
            self._last_write = self._clock()
        with contextlib.suppress(OSError):  # progress is a courtesy: never fail the work over it
            atomic_write_text(self.path, snap.model_dump_json())
        return snap

    def metadata(self) -> dict[str, Any]:
        """The figures a user watched, as materialization metadata."""
        snap = self.snapshot(finished=True)
        return {
            "progress_rows": snap.done,
            "progress_resumed_rows": snap.resumed,
            "rows_per_s": snap.rows_per_s or 0.0,
            "elapsed_s": snap.elapsed_s,
        }


def running(folder: Path, *, max_age_s: float = 60.0) -> list[ProgressSnapshot]:
    """The assets reporting progress right now: unfinished, and heard from in the last ``max_age_s``
    (a killed run stops reporting, so it drops out instead of looking busy forever)."""
    if not folder.is_dir():
        return []
    now = time.time()
    snapshots = (read_progress(path) for path in sorted(folder.glob("domain=*.json")))
    return [s for s in snapshots if s is not None and not s.finished and now - s.updated_at <= max_age_s]


def read_progress(path: Path) -> ProgressSnapshot | None:
    try:
        return ProgressSnapshot.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
