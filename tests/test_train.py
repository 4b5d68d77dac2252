"""``synth train``: a user-written dspy.Module trained on a domain's validated examples (scripted
provider), its score recorded, its saved state loaded back; and every way a program file can be wrong."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from synth_pipelines.cli import app
from synth_pipelines.warehouse.storage import Warehouse
from tests.materialize import DOMAIN, failure_message, materialize_domain, up_to

runner = CliRunner()

PROGRAM = textwrap.dedent(
    '''
    import dspy


    class PickEndpoint(dspy.Signature):
        """Pick the HTTP method and endpoint for a developer's task."""

        task: str = dspy.InputField()
        method: str = dspy.OutputField()
        endpoint: str = dspy.OutputField()


    class EndpointPicker(dspy.Module):
        def __init__(self):
            super().__init__()
            self.pick = dspy.ChainOfThought(PickEndpoint)

        def forward(self, task):
            return self.pick(task=task)


    def same_method(example, prediction, trace=None):
        return example.method == prediction.method
    '''
)


@pytest.fixture
def trained_domain(tmp_path: Path, scripted_schemas_dir: Path, scripted_backends) -> Path:
    """A warehouse with validated api_development examples made by the scripted provider."""
    warehouse = tmp_path / "warehouse"
    materialize_domain(up_to("validated_examples"), warehouse, scripted_schemas_dir, target=16)
    return warehouse


def _train(warehouse: Path, program: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app, ["train", str(program), "--domain", DOMAIN, "--warehouse", str(warehouse), *extra]
    )
    return result.exit_code, result.output


def test_train_a_user_module_records_its_score_and_saves_a_loadable_program(
    trained_domain: Path, tmp_path: Path, scripted_backends
) -> None:
    program = tmp_path / "picker.py"
    program.write_text(PROGRAM)
    out_file = tmp_path / "picker_state.json"
    code, out = _train(
        trained_domain, program, "--metric", "same_method", "--optimizer", "bootstrap_few_shot",
        "--iterations", "1", "--output", str(out_file),
    )  # fmt: skip
    assert code == 0, out
    assert "inputs ['task'] -> outputs ['method', 'endpoint']" in out
    accepted = Warehouse(trained_domain).partition_rows("validated_examples", DOMAIN) or 0
    score = json.loads(
        (trained_domain / "programs/domain=api_development/trained/picker.score.json").read_text()
    )
    assert score["metric"] == "same_method" and score["optimizer"] == "bootstrap_few_shot"
    assert score["n_train"] + score["n_heldout"] == accepted
    assert len(score["per_example"]) == score["n_eval"] > 0
    assert all(v in (0.0, 1.0) for v in score["per_example"])  # a bool metric, clipped to 0/1
    with duckdb.connect(str(trained_domain / "synth.duckdb"), read_only=True) as conn:
        rows = conn.execute("select source, score, n, metric from agent_performance").fetchall()
    assert rows == [("train:picker", pytest.approx(score["score"]), score["n_eval"], "same_method")]
    # The saved state loads back into the user's class and predicts.
    from synth_pipelines.learning.dspy_lm import dspy
    from synth_pipelines.learning.program import make_lm
    from synth_pipelines.learning.train import load_trained
    from synth_pipelines.resources import LLMResource

    spec = Warehouse(trained_domain).materialized_spec(DOMAIN)
    assert spec is not None
    loaded = load_trained(program, out_file, spec)
    state = json.loads(out_file.read_text())
    assert type(loaded).__name__ == "EndpointPicker" and "pick.predict" in state
    client = LLMResource(profile="local").client(Warehouse(trained_domain).cache_path)
    with dspy.context(lm=make_lm(spec, client, client.profile.roles.program), adapter=dspy.JSONAdapter()):
        prediction = loaded(task="Create an order for a customer")
    assert prediction.method in ("GET", "POST", "PUT", "PATCH", "DELETE")  # the spec's enum bounds it
    assert isinstance(prediction.endpoint, str)


@pytest.mark.parametrize(
    ("source", "extra", "expected"),
    [
        ("import no_such_package\n", [], "failed to import: ModuleNotFoundError"),
        ("x = 1\n", [], "defines no dspy.Module subclass"),
        (PROGRAM, ["--module", "Nope"], "no dspy.Module subclass named 'Nope'; defined: ['EndpointPicker']"),
        (
            PROGRAM.replace("task", "ticket"),
            [],
            "needs inputs ['ticket'] that domain 'api_development' does not",
        ),
        (PROGRAM, ["--metric", "no_such_metric"], "defines no function 'no_such_metric'"),
    ],
)
def test_a_bad_program_file_is_a_one_line_error(
    trained_domain: Path, tmp_path: Path, source: str, extra: list[str], expected: str
) -> None:
    program = tmp_path / "bad.py"
    program.write_text(source)
    code, out = _train(trained_domain, program, *extra)
    assert code != 0
    assert expected in out, out
    assert out.strip().count("\n") == 0  # one line
    assert not (trained_domain / "programs/domain=api_development/trained").exists()


def test_a_spec_that_names_a_program_file_trains_it_in_compiled_program(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    (scripted_schemas_dir / "picker.py").write_text(PROGRAM)
    path = scripted_schemas_dir / f"{DOMAIN}.yaml"
    data = yaml.safe_load(path.read_text())
    data["program"] = {"module": "picker.py", "metric": "exact_match"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    warehouse = tmp_path / "warehouse"
    result = materialize_domain(up_to("compiled_program"), warehouse, scripted_schemas_dir, target=12)
    meta = {
        e.materialization.asset_key.path[-1]: e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }["compiled_program"]
    assert "EndpointPicker" in meta["program_source"].value
    assert meta["inputs"].value == ["task"] and meta["outputs"].value == ["method", "endpoint"]
    # A spec whose program file is missing fails at domain_schema, before any model call.
    (scripted_schemas_dir / "picker.py").unlink()
    failed = materialize_domain(
        up_to("compiled_program"), warehouse, scripted_schemas_dir, target=12, raise_on_error=False
    )
    assert not failed.success
    assert "program.module:" in failure_message(failed) and "picker.py does not exist" in failure_message(
        failed
    )
    # A program file whose fields do not match fails compiled_program naming the field.
    (scripted_schemas_dir / "picker.py").write_text(PROGRAM.replace("task", "ticket"))
    mismatched = materialize_domain(
        up_to("compiled_program"), warehouse, scripted_schemas_dir, target=12, raise_on_error=False
    )
    assert not mismatched.success
    assert "needs inputs ['ticket']" in failure_message(mismatched)
