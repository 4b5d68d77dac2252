"""The ``dbt_quality`` project as Dagster assets: its models sit downstream of the pipeline's tables
and its tests become asset checks."""

import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_quality"
# The dbt installed beside this interpreter (the venv's), whether or not the venv is on PATH.
DBT_EXECUTABLE = (
    str(Path(sys.executable).parent / "dbt")
    if (Path(sys.executable).parent / "dbt").exists()
    else (shutil.which("dbt") or "dbt")
)

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def _manifest_is_stale(manifest: Path) -> bool:
    """Missing (fresh clone), or older than a file of the project (a model, test or the project
    file was edited): the assets and their check keys must come from the project as it is."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [
        DBT_PROJECT_DIR / "dbt_project.yml",
        *DBT_PROJECT_DIR.glob("models/**/*"),
        *DBT_PROJECT_DIR.glob("tests/**/*"),
    ]
    return any(path.is_file() and path.stat().st_mtime > built for path in sources)


def ensure_manifest() -> Path:
    """Parse the dbt project when its manifest is missing or older than the project's files."""
    if _manifest_is_stale(dbt_project.manifest_path):
        subprocess.run(
            [
                DBT_EXECUTABLE,
                "parse",
                "--quiet",
                "--project-dir",
                str(DBT_PROJECT_DIR),
                "--profiles-dir",
                str(DBT_PROJECT_DIR),
            ],
            check=True,
            cwd=DBT_PROJECT_DIR,
        )
    return dbt_project.manifest_path


class _Translator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "dbt_quality"


@dbt_assets(manifest=ensure_manifest(), project=dbt_project, dagster_dbt_translator=_Translator())
def dbt_quality_models(context: dg.AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    """Staging views and marts (sft_training, qa_training, domain_quality_summary) over the warehouse's
    DuckDB tables, built with ``dbt build`` so every dbt test runs and reports as an asset check."""
    yield from dbt.cli(["build"], context=context).stream()
