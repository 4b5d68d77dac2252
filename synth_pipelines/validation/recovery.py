"""Quality checks of the statistical generators: is what was asked for recoverable from the data?

* Time series: the dominant period (a periodogram of the linearly detrended series) matches the
  configured season of largest amplitude within 5%; an STL decomposition (statsmodels) at that
  period gives a seasonal strength of at least 0.5 (1 - Var(resid) / Var(seasonal + resid)); and,
  without regime changes, the slope fitted to the deseasonalized series is within 4 standard errors
  (plus 5%) of the configured trend.
* Events: the observed arrivals per hour per stream are within 4 standard deviations of the
  expected long-run rate (Poisson: variance = mean; Hawkes: overdispersed by 1 / (1 - alpha)^2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_pipelines.spec.model import EventsSpec, TimeseriesSpec, duration_seconds

# Series checked at most (a random but fixed subset of a big domain).
MAX_SERIES_CHECKED = 20
MIN_SEASONAL_STRENGTH = 0.5
PERIOD_TOLERANCE = 0.05


def _series_values(table: pa.Table) -> dict[str, np.ndarray]:
    ids = table.column("series_id").to_numpy(zero_copy_only=False)
    values = table.column("value").to_numpy()
    steps = table.column("step").to_numpy()
    out: dict[str, np.ndarray] = {}
    for series_id in sorted(set(ids))[:MAX_SERIES_CHECKED]:
        mask = ids == series_id
        out[str(series_id)] = values[mask][np.argsort(steps[mask])]
    return out


def dominant_period(values: np.ndarray) -> float:
    """The period (in steps) with the most power after removing a linear trend."""
    from scipy import signal  # here, not at the top: 1.2 s of every process that loads the assets

    detrended = signal.detrend(values)
    freqs, power = signal.periodogram(detrended)
    k = int(np.argmax(power[1:]) + 1)  # skip the zero frequency
    return float(1.0 / freqs[k])


def check_timeseries(table: pa.Table, spec: TimeseriesSpec) -> dict[str, Any]:
    """Per checked series: the recovered period, seasonal strength and slope; ``passed`` when every
    series meets the criteria above."""
    from scipy import stats
    from statsmodels.tsa.seasonal import STL

    series = _series_values(table)
    main = max(spec.seasonality, key=lambda s: s.amplitude) if spec.seasonality else None
    results: list[dict[str, Any]] = []
    for series_id, values in series.items():
        entry: dict[str, Any] = {"series_id": series_id}
        seasonal = np.zeros_like(values)
        if main is not None and len(values) >= 2 * main.period + 1:
            period = dominant_period(values)
            fit = STL(values, period=main.period, robust=True).fit()
            seasonal = np.asarray(fit.seasonal)
            resid = np.asarray(fit.resid)
            strength = max(0.0, 1 - float(np.var(resid)) / max(float(np.var(seasonal + resid)), 1e-12))
            entry.update(
                period=round(period, 3),
                period_ok=abs(period - main.period) <= PERIOD_TOLERANCE * main.period,
                seasonal_strength=round(strength, 4),
                strength_ok=strength >= MIN_SEASONAL_STRENGTH,
            )
        if spec.regime_changes == 0:
            fitted = stats.linregress(np.arange(len(values)), values - seasonal)
            tolerance = 4 * float(fitted.stderr) + 0.05 * abs(spec.trend)
            entry.update(
                slope=round(float(fitted.slope), 6),
                slope_ok=abs(float(fitted.slope) - spec.trend) <= tolerance,
            )
        results.append(entry)
    passed = all(all(v for k, v in r.items() if k.endswith("_ok")) for r in results)
    return {
        "passed": passed,
        "series_checked": len(results),
        "expected_period": main.period if main else None,
        "expected_trend": spec.trend,
        "series": results[:5],
        "failing": [r["series_id"] for r in results if not all(v for k, v in r.items() if k.endswith("_ok"))],
    }


def check_events(table: pa.Table, spec: EventsSpec) -> dict[str, Any]:
    """The observed rate against the expected long-run rate, pooled over streams."""
    from synth_pipelines.generation.simulate import expected_event_rate

    hours = duration_seconds(spec.duration) / 3600.0
    observed = table.num_rows
    expected = expected_event_rate(spec) * hours * spec.streams
    overdispersion = 1.0 / (1.0 - spec.hawkes_alpha) ** 2 if spec.process == "hawkes" else 1.0
    sd = math.sqrt(max(expected, 1e-9) * overdispersion)
    z = (observed - expected) / sd
    per_stream = pc.value_counts(table.column("stream_id")).to_pylist() if observed else []
    ordered = True
    if observed:
        for stream in {v["values"] for v in per_stream}:
            stamps = table.filter(pc.equal(table.column("stream_id"), stream)).column("timestamp")
            ordered = ordered and bool(
                pc.all(pc.greater_equal(stamps.slice(1), stamps.slice(0, len(stamps) - 1))).as_py()
                in (True, None)
            )
    return {
        "passed": abs(z) <= 4 and ordered,
        "observed_rate_per_hour": round(observed / (hours * spec.streams), 4),
        "expected_rate_per_hour": round(expected / (hours * spec.streams), 4),
        "z": round(z, 3),
        "events": observed,
        "timestamps_ordered": ordered,
    }
