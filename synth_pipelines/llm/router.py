"""Routing: order the generator chain by a strategy. The first model serves; the rest are fallbacks."""

from __future__ import annotations

from typing import Literal

from synth_pipelines.llm.config import ModelConfig

Strategy = Literal["declared", "cost", "quality", "speed", "balanced"]


def _price(cfg: ModelConfig) -> float:
    # A typical generation reads ~3x what it writes.
    return 3 * cfg.input_price_per_mtok + cfg.output_price_per_mtok


def _speed(cfg: ModelConfig, observed_tps: float | None) -> float:
    return observed_tps if observed_tps is not None else cfg.tokens_per_second


def _normalize(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [0.5 if hi == lo else (v - lo) / (hi - lo) for v in values]


def order_models(
    names: list[str],
    models: dict[str, ModelConfig],
    strategy: Strategy,
    observed_tps: dict[str, float] | None = None,
) -> list[str]:
    """Return ``names`` ordered for ``strategy`` (stable: ties keep the declared order).

    * cost: cheapest first (price per million tokens, 3:1 input:output);
    * quality: highest ``quality`` first;
    * speed: highest tokens/s first (observed in this run when known, else configured);
    * balanced: best of quality + speed - cost, each normalized to 0..1 across the chain.
    """
    if strategy == "declared" or len(names) <= 1:
        return list(names)
    observed = observed_tps or {}
    cfgs = [models[n] for n in names]
    if strategy == "cost":
        keys = [_price(c) for c in cfgs]
    elif strategy == "quality":
        keys = [-c.quality for c in cfgs]
    elif strategy == "speed":
        keys = [-_speed(c, observed.get(n)) for n, c in zip(names, cfgs, strict=True)]
    else:
        quality = _normalize([c.quality for c in cfgs])
        speed = _normalize([_speed(c, observed.get(n)) for n, c in zip(names, cfgs, strict=True)])
        cost = _normalize([_price(c) for c in cfgs])
        keys = [-(q + s - k) for q, s, k in zip(quality, speed, cost, strict=True)]
    order = sorted(range(len(names)), key=lambda i: (keys[i], i))
    return [names[i] for i in order]
