"""The package's map: a lower package never imports a higher one, and the plain packages under the
Dagster layer never import Dagster, so they can be used and tested without it.

Nor is there an import circle between modules, not even inside one package and not even through
an import inside a function (that only hides the circle from Python, not from a reader).

The checker is a plain AST walk over ``synth_pipelines/`` (absolute, relative and function-local
imports and ``importlib.import_module("synth_pipelines....")`` with a literal name all count),
tested on a tree with deliberately wrong imports so that it can fail.
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
# layer are independent of each other. docs/architecture.md's "Where things live" table says the same.
LAYERS: list[tuple[str, ...]] = [
    ("spec", "llm"),
    ("warehouse", "tooluse"),
    ("generation",),
    ("validation",),
    ("learning",),
    ("planning", "exports"),
    ("partitions", "resources"),
    ("assets",),
    ("jobs",),
    ("celery_worker",),
    ("sensors",),
    ("definitions", "dbt_definitions"),
    ("runner",),
    ("strategy_benchmark",),
    ("service",),
    ("cli",),
]
# Test support (the fake OpenAI server): imports only itself, and no product module imports it.
ISOLATED = {"testing"}
# The plain packages: no Dagster (nor dagster-dbt, dagster-k8s, ...), directly or lazily.
PLAIN = ("spec", "llm", "warehouse", "tooluse", "generation", "validation", "learning", "planning", "exports")


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
        elif _is_import_module_call(node):
            found.append((node.lineno, node.args[0].value))  # type: ignore[attr-defined]
    return found


def _is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("literal")`` or ``import_module("literal")``."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    if not isinstance(node.args[0].value, str):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name == "import_module"


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


def _module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the tree."""
    return {".".join(_module_parts(p.relative_to(package_dir))): p for p in package_dir.rglob("*.py")}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a.b import c`` counts as ``a.b.c`` when
    that is a module, else ``a.b``); a package's ``__init__`` importing its own modules (re-exports)
    is left out, since every module of the package imports the ``__init__`` first anyway."""
    modules = _module_files(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        relative = path.relative_to(package_dir)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for _, imported in _imported_modules(tree, _module_parts(relative), path.name == "__init__.py"):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        if path.name == "__init__.py":
            targets = {t for t in targets if not t.startswith(name + ".")}
        graph[name] = targets
    return graph


def import_circles(package_dir: Path) -> list[list[str]]:
    """Every import circle between modules (each strongly connected group of more than one module,
    Tarjan's algorithm), as a sorted list of module names."""
    graph = import_graph(package_dir)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


# ----------------------------------------------------------------------------------------- the real tree


def test_layers_hold_in_the_package() -> None:
    assert layer_violations(PACKAGE_DIR) == []


def test_no_import_circles_in_the_package() -> None:
    assert import_circles(PACKAGE_DIR) == []


def test_every_unit_in_the_package_is_placed() -> None:
    units = {_unit_of(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")}
    assert units <= set(allowed_imports()), units - set(allowed_imports())
    # Each plain package is a folder of its own, as docs/architecture.md says.
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
        (
            "warehouse/bad.py",
            "from synth_pipelines.generation import generation_prompts\n",
            "imports generation",
        ),
        ("generation/bad.py", "import dagster as dg\n", "imports dagster, but generation/"),
        ("learning/bad.py", "from dagster_dbt import DbtCliResource\n", "imports dagster_dbt"),
        ("assets/bad.py", "from synth_pipelines.jobs import synth_domain_job\n", "assets imports jobs"),
        ("jobs.py", "from synth_pipelines.definitions import defs\n", "jobs imports definitions"),
        ("llm/bad.py", "from synth_pipelines.testing import fake_openai\n", "llm imports testing"),
        ("newthing/x.py", "x = 1\n", "has no place in the layering"),
        (
            "validation/bad.py",
            "import importlib\nm = importlib.import_module('synth_pipelines.assets.checks')\n",
            "validation imports assets",
        ),
        ("planning/bad.py", "from synth_pipelines.assets import checks\n", "planning imports assets"),
        ("exports/bad.py", "from synth_pipelines.planning import forecast\n", "exports imports planning"),
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
                from synth_pipelines.generation import generation_prompts
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


def test_checker_finds_a_circle_inside_one_package_even_through_a_function(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "spec/__init__.py": "",
            "spec/model.py": "def parse():\n    from synth_pipelines.spec.rules import check\n",
            "spec/rules.py": "from synth_pipelines.spec.schema import shape\n",
            "spec/schema.py": "from synth_pipelines.spec.model import DomainSpec\n",
            "spec/loose.py": "from synth_pipelines.spec import model\n",
            "llm/__init__.py": "",
            "llm/a.py": "import importlib\nimportlib.import_module('synth_pipelines.llm.b')\n",
            "llm/b.py": "from . import a\n",
        },
    )
    assert layer_violations(root) == []  # no layer is crossed; only the circles are wrong
    assert import_circles(root) == [
        ["synth_pipelines.llm.a", "synth_pipelines.llm.b"],
        ["synth_pipelines.spec.model", "synth_pipelines.spec.rules", "synth_pipelines.spec.schema"],
    ]


def test_checker_accepts_a_package_that_re_exports_its_modules(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "assets/__init__.py": "from synth_pipelines.assets.one import one\n",
            "assets/one.py": "from synth_pipelines.assets._common import helper\n",
            "assets/_common.py": "helper = 1\n",
        },
    )
    assert import_circles(root) == []


def test_only_validation_defines_which_stages_were_judged() -> None:
    """Judged rows and their pass rate have one definition (``validation/gates.py``): no other
    module lists the judged rejection stages itself."""
    owner = PACKAGE_DIR / "validation" / "gates.py"
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"consensus", "near_duplicate"} <= values:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_loading_the_code_location_leaves_the_heavy_libraries_for_the_steps_that_use_them() -> None:
    """Every Dagster run, daemon, Celery worker and `dagster job launch` loads the code location:
    scipy (1.5 s of a 4.3 s load here), torch and DSPy are imported by the steps that use them."""
    heavy = ("scipy", "torch", "dspy", "sentence_transformers")
    probe = (
        f"import sys, synth_pipelines.definitions; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""
