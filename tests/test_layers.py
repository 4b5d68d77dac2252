"""The package's map: a lower package never imports a higher one, and the plain packages under the
Dagster layer never import Dagster, so they can be used and tested without it.

The checker is a plain AST walk over ``synth_pipelines/`` (absolute, relative and function-local
imports all count), tested on a tree with deliberately wrong imports so that it can fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "synth_pipelines"
PACKAGE = "synth_pipelines"

# Bottom to top. A module may import its own unit and the units of lower layers; units that share a
# layer are independent of each other. The README's "Where things live" table says the same.
LAYERS: list[tuple[str, ...]] = [
    ("spec", "llm"),
    ("warehouse",),
    ("generation",),
    ("validation",),
    ("learning",),
    ("partitions", "resources"),
    ("assets",),
    ("jobs",),
    ("sensors",),
    ("definitions", "dbt_definitions"),
    ("runner",),
    ("service",),
    ("cli",),
]
# Test support (the fake OpenAI server): imports only itself, and no product module imports it.
ISOLATED = {"testing"}
# The plain packages: no Dagster (nor dagster-dbt, dagster-k8s, ...), directly or lazily.
PLAIN = ("spec", "llm", "warehouse", "generation", "validation", "learning")


def allowed_imports() -> dict[str, set[str]]:
    allowed: dict[str, set[str]] = {"": set()}  # synth_pipelines/__init__.py
    below: set[str] = set()
    for layer in LAYERS:
        for unit in layer:
            allowed[unit] = below | {unit, ""}
        below |= set(layer)
    for unit in ISOLATED:
        allowed[unit] = {unit}
    return allowed


def _unit_of(relative: Path) -> str:
    """The top-level folder or module a file belongs to ('' for the package's own __init__)."""
    first = relative.parts[0]
    return "" if first == "__init__.py" else first.removesuffix(".py")


def _module_parts(relative: Path) -> list[str]:
    parts = [PACKAGE, *relative.with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(tree: ast.Module, module_parts: list[str], is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, relative imports resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts if is_package else module_parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # ``from synth_pipelines import assets`` imports the unit ``assets``.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def layer_violations(package_dir: Path) -> list[str]:
    """Every import that breaks the layering, as 'file:line: what is wrong'."""
    allowed = allowed_imports()
    problems: list[str] = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        unit = _unit_of(relative)
        where = f"{PACKAGE}/{relative.as_posix()}"
        if unit not in allowed:
            problems.append(f"{where}: unit {unit!r} has no place in the layering; add it to LAYERS")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _imported_modules(tree, _module_parts(relative), path.name == "__init__.py"):
            top = name.split(".")[0]
            if unit in PLAIN and (top == "dagster" or top.startswith("dagster_")):
                problems.append(f"{where}:{line}: imports {top}, but {unit}/ must work without Dagster")
            if top != PACKAGE:
                continue
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target not in allowed[unit]:
                may = ", ".join(sorted(u for u in allowed[unit] if u)) or "nothing else of the package"
                problems.append(f"{where}:{line}: {unit or PACKAGE} imports {target} (may import: {may})")
    return problems


# ----------------------------------------------------------------------------------------- the real tree


def test_layers_hold_in_the_package() -> None:
    assert layer_violations(PACKAGE_DIR) == []


def test_every_unit_in_the_package_is_placed() -> None:
    units = {_unit_of(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")}
    assert units <= set(allowed_imports()), units - set(allowed_imports())
    # Each plain package is a folder of its own, as the README's table says.
    assert all((PACKAGE_DIR / unit / "__init__.py").is_file() for unit in PLAIN)


def test_plain_packages_import_without_dagster() -> None:
    """Import every module of the plain packages with Dagster made unimportable."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        for name in ("dagster", "dagster_dbt", "dagster_k8s", "dagster_webserver"):
            sys.modules[name] = None  # any import of it now raises ImportError
        import {PACKAGE}
        imported = []
        for unit in {PLAIN!r}:
            package = importlib.import_module("{PACKAGE}." + unit)
            imported.append(package.__name__)
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
                imported.append(info.name)
        print(len(imported))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Every module file of the plain packages was imported (no silent skip).
    expected = sum(1 for unit in PLAIN for _ in (PACKAGE_DIR / unit).rglob("*.py"))
    assert int(done.stdout.strip().splitlines()[-1]) == expected


# ----------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("validation/bad.py", "from synth_pipelines.assets import checks\n", "validation imports assets"),
        ("validation/bad.py", "from ..assets import checks\n", "validation imports assets"),
        ("validation/bad.py", "from synth_pipelines import assets\n", "validation imports assets"),
        ("spec/bad.py", "def f():\n    import synth_pipelines.llm.client\n", "spec imports llm"),
        ("llm/bad.py", "from synth_pipelines.spec.model import DomainSpec\n", "llm imports spec"),
        ("warehouse/bad.py", "from synth_pipelines.generation import prompts\n", "imports generation"),
        ("generation/bad.py", "import dagster as dg\n", "imports dagster, but generation/"),
        ("learning/bad.py", "from dagster_dbt import DbtCliResource\n", "imports dagster_dbt"),
        ("assets/bad.py", "from synth_pipelines.jobs import synth_domain_job\n", "assets imports jobs"),
        ("jobs.py", "from synth_pipelines.definitions import defs\n", "jobs imports definitions"),
        ("llm/bad.py", "from synth_pipelines.testing import fake_openai\n", "llm imports testing"),
        ("newthing/x.py", "x = 1\n", "has no place in the layering"),
    ],
)
def test_checker_reports_a_wrong_import(tmp_path: Path, relative: str, source: str, expected: str) -> None:
    root = _tree(tmp_path, {"__init__.py": "", relative: source})
    problems = layer_violations(root)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith(f"{PACKAGE}/{relative}")


def test_checker_accepts_downward_and_sibling_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "validation/ok.py": """
                from synth_pipelines.generation import prompts
                from synth_pipelines.spec.model import DomainSpec
                from . import rules
                from .dedup import near_duplicate_selection
                import numpy
            """,
            "assets/ok.py": "import dagster as dg\nfrom synth_pipelines.resources import LLMResource\n",
            "cli.py": "from synth_pipelines.runner import main\n",
        },
    )
    assert layer_violations(root) == []
