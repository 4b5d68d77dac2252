"""Every `synth` command, through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_lists_commands() -> None:
    code, out = run("--help")
    assert code == 0
    for command in (
        "generate",
        "schema",
        "validate",
        "status",
        "export",
        "record-outcome",
        "ingest-outcomes",
        "doctor",
    ):
        assert command in out


def test_schema_templates_new_validate(tmp_path: Path) -> None:
    code, out = run("schema", "templates")
    assert code == 0 and len(out.strip().splitlines()) == 8 and "conversation" in out and "timeseries" in out
    code, out = run("schema", "new", "support_tickets", "--type", "conversation", "--schemas", str(tmp_path))
    assert code == 0, out
    created = tmp_path / "support_tickets.yaml"
    assert yaml.safe_load(created.read_text())["domain"] == "support_tickets"
    code, out = run("schema", "validate", str(created))
    assert code == 0 and "valid conversation spec" in out
    code, out = run("schema", "new", "support_tickets", "--type", "conversation", "--schemas", str(tmp_path))
    assert code == 1 and "exists" in out
    code, out = run("schema", "new", "x_domain", "--type", "poem", "--schemas", str(tmp_path))
    assert code == 2 and "unknown template" in out
    code, out = run("schema", "new", "Bad-Name", "--schemas", str(tmp_path))
    assert code == 2 and "unsafe domain name" in out


def test_schema_validate_reports_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    data = yaml.safe_load((Path("schemas") / "api_development.yaml").read_text())
    data["domain"] = "broken"
    data["fields"]["method"]["type"] = "verb"
    bad.write_text(yaml.safe_dump(data))
    code, out = run("schema", "validate", str(bad))
    assert code == 1 and "fields.method.type" in out and "'verb'" in out


def test_validate_external_file(tmp_path: Path, schemas_dir: Path, scripted_backends) -> None:
    rows = [
        {
            "task": "List all open invoices of one customer",
            "method": "GET",
            "endpoint": "/customers/7/invoices",
            "explanation": "GET on the invoices of customer 7 filtered by status=open returns them.",
        },
        {
            "task": "List all open invoices of one customer",
            "method": "GET",
            "endpoint": "/customers/7/invoices",
            "explanation": "An exact duplicate of the first row, which must be rejected by the dedup stage.",
        },
        {"task": "x", "method": "FETCH", "endpoint": "nope", "explanation": "too short"},
    ]
    file = tmp_path / "external.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    report = tmp_path / "report.json"
    code, out = run(
        "validate",
        str(file),
        "--domain",
        "api_development",
        "--report",
        str(report),
        "--schemas",
        str(schemas_dir),
        "--warehouse",
        str(tmp_path / "wh"),
    )
    assert code == 1, out  # some rows fail
    data = json.loads(report.read_text())
    stages = [r["stage"] for r in data["rows"]]
    assert stages[1:] == ["dedup", "rules", "read"]
    # The default (local) profile's panel is uninformative, so it is skipped and the row says so
    # (a judged outside row: tests/test_judging.py).
    assert data["rows"][0]["passed"] and data["rows"][0]["panel"].startswith("skipped")
    assert "1/4 rows pass" in out


@pytest.fixture
def built_warehouse(tmp_path: Path, scripted_schemas_dir: Path, scripted_backends) -> tuple[Path, Path]:
    wh = tmp_path / "wh"
    code, out = run(
        "generate",
        "--domain",
        "api_development",
        "--count",
        "8",
        "--warehouse",
        str(wh),
        "--schemas",
        str(scripted_schemas_dir),
    )
    assert code == 0, out
    assert "compiled_program" in out and "checks:" in out
    return wh, scripted_schemas_dir


def test_status_and_export(built_warehouse: tuple[Path, Path], tmp_path: Path) -> None:
    wh, schemas = built_warehouse
    code, out = run("status", "--warehouse", str(wh))
    assert code == 0 and "api_development" in out and "%" in out
    out_dir = tmp_path / "x"
    code, out = run(
        "export",
        "--domain",
        "api_development",
        "--format",
        "sft",
        "--out",
        str(out_dir),
        "--warehouse",
        str(wh),
        "--schemas",
        str(schemas),
    )
    assert code == 0, out
    df = pl.read_parquet(out_dir / "api_development_sft.parquet")
    assert df.height >= 1
    roles = [m["role"] for m in df["messages"][0]]
    assert roles == ["system", "user", "assistant"]
    card = (out_dir / "README.md").read_text()
    for section in ("## What it is", "## How it was made", "## How to load it", "load_dataset", "polars"):
        assert section in card
    code, out = run(
        "export",
        "--domain",
        "api_development",
        "--format",
        "csv",
        "--out",
        str(out_dir),
        "--warehouse",
        str(wh),
        "--schemas",
        str(schemas),
    )
    assert code == 2 and "not exportable" in out


def test_errors_are_short_and_nonzero(tmp_path: Path) -> None:
    code, out = run("status", "--warehouse", str(tmp_path / "empty"))
    assert code == 1 and "nothing materialized" in out
    code, out = run("generate", "--domain", "../etc")
    assert code == 2 and "unsafe domain name" in out
    code, out = run(
        "export",
        "--domain",
        "api_development",
        "--out",
        str(tmp_path / "o"),
        "--warehouse",
        str(tmp_path / "empty"),
    )
    assert code == 1 and "has not been generated" in out and "synth generate --domain api_development" in out


def test_entry_point_process_exits_with_the_commands_code(tmp_path: Path) -> None:
    """`synth` as a process (``main`` ends with os._exit): the exit code is still the command's."""
    import subprocess
    import sys

    code = "from synth_pipelines.cli import main; main()"
    bad = subprocess.run(
        [sys.executable, "-c", code, "status", "--warehouse", "nosuch://x"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: storage location 'nosuch://x': unknown protocol 'nosuch' (Unsupported filesystem: 'nosuch'). "
        "Use a local folder or an fsspec URL such as s3://bucket/prefix."
    ]
    empty = subprocess.run(
        [sys.executable, "-c", code, "status", "--warehouse", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert empty.returncode == 1 and "nothing materialized" in empty.stderr
