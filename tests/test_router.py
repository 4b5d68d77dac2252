"""Routing strategies, budget stop and RPM/TPM limits."""

from __future__ import annotations

import pytest

from synth_pipelines.llm.config import ModelConfig
from synth_pipelines.llm.router import order_models


def cfg(price_in: float, price_out: float, quality: float, tps: float) -> ModelConfig:
    return ModelConfig(
        kind="openai",
        base_url="http://127.0.0.1:1/v1",
        model_id="m",
        quality=quality,
        tokens_per_second=tps,
        input_price_per_mtok=price_in,
        output_price_per_mtok=price_out,
    )


MODELS = {
    "cheap-slow-weak": cfg(0.1, 0.4, 0.3, 20),
    "pricey-strong": cfg(5.0, 15.0, 0.95, 60),
    "mid-fast": cfg(0.5, 1.5, 0.7, 200),
}
NAMES = list(MODELS)


@pytest.mark.parametrize(
    ("strategy", "first"),
    [
        ("declared", "cheap-slow-weak"),
        ("cost", "cheap-slow-weak"),
        ("quality", "pricey-strong"),
        ("speed", "mid-fast"),
        ("balanced", "mid-fast"),
    ],
)
def test_strategies_pick_the_expected_first_model(strategy: str, first: str) -> None:
    order = order_models(NAMES, MODELS, strategy)  # type: ignore[arg-type]
    assert order[0] == first
    assert sorted(order) == sorted(NAMES)  # the rest stay as fallbacks


def test_observed_speed_overrides_configured() -> None:
    order = order_models(NAMES, MODELS, "speed", {"cheap-slow-weak": 1000.0})
    assert order[0] == "cheap-slow-weak"
