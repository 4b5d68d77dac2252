"""Reading spec files: YAML to a validated :class:`DomainSpec`, with every problem named by its field
path (rules whose SQL does not compile included), and finding the specs of a schemas folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from synth_pipelines.spec.model import DomainSpec, SpecError
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.spec.rules import rule_problems


class LoadedSpec(BaseModel):
    """A spec together with where it came from and the hash of its bytes (its data version)."""

    model_config = ConfigDict(frozen=True)

    path: str
    file_hash: str
    spec: DomainSpec


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-after")))


def _explain(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    msg = str(error.get("msg", ""))
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"got {error.get('input')!r}, expected one of {expected}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see docs/specs.md)"
    return msg.removeprefix("Value error, ")


def parse_spec(data: Any, *, path: str | Path = "<memory>") -> DomainSpec:
    """Validate already-loaded YAML data; raise :class:`SpecError` naming the path of every problem
    (a rule whose SQL does not compile is one, named by the rule)."""
    if not isinstance(data, dict):
        raise SpecError(path, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    try:
        spec = DomainSpec.model_validate(data)
    except ValidationError as e:
        problems = [(_format_loc(err["loc"]), _explain(dict(err))) for err in e.errors()]
        raise SpecError(path, problems) from None
    problems = rule_problems(spec)
    if problems:
        raise SpecError(path, problems)
    return spec


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate ``schemas/<domain>.yaml``. The file stem must equal the spec's ``domain``."""
    p = Path(path)
    stem = p.stem
    try:
        validate_domain_name(stem, source=str(p))
    except UnsafeDomainError as e:
        raise SpecError(p, [("<file name>", str(e))]) from None
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SpecError(p, [("", f"cannot read the file: {e.strerror}")]) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(p, [("", f"malformed YAML at {where}: {getattr(e, 'problem', e)}")]) from None
    spec = parse_spec(data, path=p)
    if spec.domain != stem:
        raise SpecError(
            p, [("domain", f"is {spec.domain!r} but the file is named {p.name}; rename one so they match")]
        )
    return LoadedSpec(path=str(p), file_hash=hashlib.sha256(raw).hexdigest(), spec=spec)


TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
"""One spec template per example type (``synth schema templates``)."""


def discover_specs(schemas_dir: str | Path) -> dict[str, Path]:
    """Map domain -> spec path for every ``*.yaml`` directly in ``schemas_dir`` (templates excluded)."""
    d = Path(schemas_dir)
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.yaml")) if p.is_file()}


def spec_path_for(schemas_dir: str | Path, domain: str) -> Path:
    validate_domain_name(domain)
    p = Path(schemas_dir) / f"{domain}.yaml"
    if not p.is_file():
        raise FileNotFoundError(
            f"no spec for domain {domain!r}: expected {p}. Create it (see `synth schema templates`) "
            "or pick an existing domain."
        )
    return p
