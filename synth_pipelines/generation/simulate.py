"""Statistical generators for the ``timeseries`` and ``events`` spec types (numpy and scipy, no
model): deterministic for the spec's ``seed``, typed Arrow out (timestamps are timestamps).

* Time series: ``level + trend * step + sum of seasonal sines + noise`` (Gaussian, or AR(1) with
  coefficient ``ar``), plus ``regime_changes`` level shifts at random steps (size ``regime_shift``,
  random sign) and anomalies (a share ``anomalies`` of the steps, spiked by ``anomaly_scale`` noise
  standard deviations). Each series gets its own random phase per season.
* Events: per stream, arrivals of a homogeneous Poisson process at ``rate`` per hour, or of a Hawkes
  process with exponential kernel simulated by Ogata's thinning (baseline ``rate``, branching ratio
  ``hawkes_alpha``, decay ``hawkes_beta`` per hour); each event gets its typed attributes.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from synth_pipelines.spec.model import AttributeSpec, EventsSpec, TimeseriesSpec, duration_seconds

TIMESTAMP = pa.timestamp("us", tz="UTC")
TIMESERIES = pa.schema(
    [
        ("series_id", pa.string()),
        ("step", pa.int64()),
        ("timestamp", TIMESTAMP),
        ("value", pa.float64()),
        ("regime", pa.int64()),
        ("is_anomaly", pa.bool_()),
    ]
)


def _noise(rng: np.random.Generator, spec: TimeseriesSpec) -> np.ndarray:
    eps = rng.normal(0.0, spec.noise, spec.length)
    if spec.ar == 0.0:
        return eps
    # AR(1) with the same marginal std as the Gaussian noise: scale the innovations.
    innovations = eps * math.sqrt(1 - spec.ar**2)
    out = np.empty(spec.length)
    out[0] = eps[0]
    for i in range(1, spec.length):
        out[i] = spec.ar * out[i - 1] + innovations[i]
    return out


def generate_timeseries(spec: TimeseriesSpec) -> pa.Table:
    """``series`` x ``length`` rows, one per step of each series."""
    rng = np.random.default_rng(spec.seed)
    steps = np.arange(spec.length)
    step_us = int(duration_seconds(spec.frequency) * 1_000_000)
    start_us = int(spec.start.timestamp() * 1_000_000)
    stamps = start_us + steps * step_us
    columns: dict[str, list[np.ndarray]] = {k: [] for k in TIMESERIES.names}
    for s in range(spec.series):
        values = spec.level + spec.trend * steps
        for season in spec.seasonality:
            phase = rng.uniform(0, 2 * math.pi)
            values = values + season.amplitude * np.sin(2 * math.pi * steps / season.period + phase)
        values = values + _noise(rng, spec)
        regime = np.zeros(spec.length, dtype=np.int64)
        if spec.regime_changes:
            points = np.sort(
                rng.choice(
                    np.arange(1, spec.length), size=min(spec.regime_changes, spec.length - 1), replace=False
                )
            )
            for k, point in enumerate(points, start=1):
                values[point:] += rng.choice([-1.0, 1.0]) * spec.regime_shift
                regime[point:] = k
        anomaly = rng.random(spec.length) < spec.anomalies
        values[anomaly] += (
            rng.choice([-1.0, 1.0], size=int(anomaly.sum())) * spec.anomaly_scale * max(spec.noise, 1e-9)
        )
        columns["series_id"].append(np.full(spec.length, f"series_{s:04d}", dtype=object))
        columns["step"].append(steps)
        columns["timestamp"].append(stamps)
        columns["value"].append(values)
        columns["regime"].append(regime)
        columns["is_anomaly"].append(anomaly)
    return pa.table(
        {
            "series_id": pa.array(np.concatenate(columns["series_id"]), pa.string()),
            "step": pa.array(np.concatenate(columns["step"]), pa.int64()),
            "timestamp": pa.array(np.concatenate(columns["timestamp"]), pa.int64()).cast(TIMESTAMP),
            "value": pa.array(np.concatenate(columns["value"]), pa.float64()),
            "regime": pa.array(np.concatenate(columns["regime"]), pa.int64()),
            "is_anomaly": pa.array(np.concatenate(columns["is_anomaly"]), pa.bool_()),
        },
        schema=TIMESERIES,
    )


def poisson_arrivals(rng: np.random.Generator, rate: float, horizon: float) -> np.ndarray:
    """Arrival times (hours) of a Poisson process on [0, horizon)."""
    n = rng.poisson(rate * horizon)
    return np.sort(rng.uniform(0.0, horizon, n))


def hawkes_arrivals(
    rng: np.random.Generator, mu: float, alpha: float, beta: float, horizon: float
) -> np.ndarray:
    """Arrival times (hours) of a Hawkes process with intensity
    ``mu + sum(alpha * beta * exp(-beta * (t - t_i)))`` on [0, horizon), by Ogata's thinning."""
    times: list[float] = []
    t = 0.0
    excitation = 0.0  # sum of alpha*beta*exp(-beta*(t - t_i)) at time t
    while True:
        upper = mu + excitation  # the intensity only decays until the next event
        wait = rng.exponential(1.0 / upper)
        excitation *= math.exp(-beta * wait)
        t += wait
        if t >= horizon:
            break
        if rng.random() * upper <= mu + excitation:
            times.append(t)
            excitation += alpha * beta
    return np.asarray(times)


def _attribute(rng: np.random.Generator, spec: AttributeSpec, n: int) -> pa.Array:
    if spec.type == "category":
        weights = np.asarray(spec.weights or [1.0] * len(spec.values), dtype=float)
        picks = rng.choice(len(spec.values), size=n, p=weights / weights.sum())
        return pa.array([spec.values[i] for i in picks], pa.string())
    if spec.distribution == "lognormal":
        values = rng.lognormal(spec.mean, spec.std, n)
    elif spec.distribution == "uniform":
        values = rng.uniform(spec.low, spec.high, n)
    elif spec.distribution == "poisson":
        values = rng.poisson(max(spec.mean, 0.0), n).astype(float)
    else:
        values = rng.normal(spec.mean, spec.std, n)
    if spec.type == "integer":
        return pa.array(np.rint(values).astype(np.int64), pa.int64())
    return pa.array(values, pa.float64())


def generate_events(spec: EventsSpec) -> pa.Table:
    """One row per event: stream, id, timestamp (sorted within a stream) and the attributes."""
    rng = np.random.default_rng(spec.seed)
    horizon = duration_seconds(spec.duration) / 3600.0
    stream_ids: list[str] = []
    hours: list[np.ndarray] = []
    for s in range(spec.streams):
        if spec.process == "hawkes":
            arrivals = hawkes_arrivals(rng, spec.rate, spec.hawkes_alpha, spec.hawkes_beta, horizon)
        else:
            arrivals = poisson_arrivals(rng, spec.rate, horizon)
        stream_ids += [f"stream_{s:04d}"] * len(arrivals)
        hours.append(arrivals)
    offsets = np.concatenate(hours) if hours else np.zeros(0)
    n = len(offsets)
    start_us = int(spec.start.timestamp() * 1_000_000)
    stamps = (start_us + np.rint(offsets * 3_600_000_000)).astype(np.int64)
    columns: dict[str, pa.Array] = {
        "stream_id": pa.array(stream_ids, pa.string()),
        "event_id": pa.array([f"e_{i:08d}" for i in range(n)], pa.string()),
        "timestamp": pa.array(stamps, pa.int64()).cast(TIMESTAMP),
    }
    for name, attribute in spec.attributes.items():
        columns[name] = _attribute(rng, attribute, n)
    return pa.table(columns)


def expected_event_rate(spec: EventsSpec) -> float:
    """Long-run events per hour per stream (Hawkes: baseline / (1 - branching ratio))."""
    return spec.rate / (1 - spec.hawkes_alpha) if spec.process == "hawkes" else spec.rate
