"""Decontamination (issue 27, part 1): generated rows that share a word n-gram with an eval set."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth_pipelines.spec.model import DecontaminationSpec, EvalSetSpec
from synth_pipelines.validation.decontamination import (
    EvalSetError,
    NgramIndex,
    build_index,
    load_eval_texts,
    words,
)

QUESTION = (
    "A train leaves the station at nine and travels at sixty miles an hour toward a city two "
    "hundred miles away; when does it arrive if it stops twice for ten minutes?"
)


def test_a_planted_13_gram_is_found_whatever_its_case_and_punctuation() -> None:
    index = NgramIndex(13, 8)
    index.add("trains", [QUESTION])
    copied = " ".join(words(QUESTION)[5:18]).upper().replace(" ", ",  ")  # 13 words, other dress
    found = index.find([f"Intro text. {copied}. And more.", "nothing to do with it at all"])
    assert found[0] is not None and found[0].sets == ["trains"]
    assert found[0].ngram == " ".join(words(QUESTION)[5:18])
    assert found[1] is None


def test_twelve_shared_words_are_not_an_overlap_at_13_grams() -> None:
    index = NgramIndex(13, 8)
    index.add("trains", [QUESTION])
    twelve = " ".join(words(QUESTION)[0:12])
    assert index.find([twelve + " something else entirely"]) == [None]
    assert NgramIndex(12, 8).find([twelve]) == [None]  # an empty index finds nothing
    small = NgramIndex(12, 8)
    small.add("trains", [QUESTION])
    assert small.find([twelve])[0] is not None


def test_a_short_eval_text_counts_whole_and_a_too_short_one_not_at_all() -> None:
    index = NgramIndex(13, 8)
    index.add("short", ["What is the capital city of France today?", "Is it raining?"])
    hits = index.find(
        [
            "Quiz: what is the capital city of France today? Paris.",  # the 8-word question whole
            "what is the capital city of France",  # 7 of its 8 words
            "Is it raining? Yes.",  # 3 words: below min_ngram, never indexed
        ]
    )
    assert hits[0] is not None and hits[1] is None and hits[2] is None


def test_overlaps_are_attributed_per_eval_set_and_never_span_two_texts() -> None:
    a = " ".join(f"alpha{n}" for n in range(20))
    b = " ".join(f"beta{n}" for n in range(20))
    index = NgramIndex(13, 8)
    index.add("set_a", [a])
    index.add("set_b", [b, a])
    found = index.find([a, b, " ".join(a.split()[-6:]), " ".join(b.split()[:7])])
    assert found[0] is not None and found[0].sets == ["set_a", "set_b"]
    assert found[1] is not None and found[1].sets == ["set_b"]
    # The last 6 words of one text and the first 7 of the next make 13 in a row only across texts.
    assert found[2] is None and found[3] is None
    with pytest.raises(ValueError, match="named twice"):
        index.add("set_a", ["x"])


def _real_texts() -> dict[str, str]:
    """Human-written code and prose from the standard library: nobody here wrote or tuned on it."""
    import csv
    import json.decoder
    import shlex
    import textwrap as tw

    return {m.__name__: inspect.getsource(m) for m in (json.decoder, tw, csv, shlex)}


def test_real_code_copied_into_a_row_is_found_and_unrelated_real_code_is_not() -> None:
    texts = _real_texts()
    index = NgramIndex(13, 8)
    index.add("json_decoder", texts["json.decoder"].split("\n\n"))
    lines = texts["json.decoder"].splitlines()
    middle = len(lines) // 2
    planted = "Here is a helper I wrote:\n" + "\n".join(lines[middle : middle + 12])
    others = [p for name in ("textwrap", "csv", "shlex") for p in texts[name].split("\n\n") if p.strip()]
    found = index.find([planted, *others])
    assert found[0] is not None and found[0].sets == ["json_decoder"]
    assert [o for o in found[1:] if o is not None] == []  # 0 of the other modules' paragraphs


def _write_sets(folder: Path) -> None:
    (folder / "eval").mkdir(parents=True)
    rows = [
        {"question": QUESTION, "answer": "at 12:40", "id": 1},
        {"question": "short one", "answer": "x", "id": 2},
    ]
    (folder / "eval" / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "eval" / "qa.csv").write_text(
        "question,answer\n" + "".join(f'"{r["question"]}",{r["answer"]}\n' for r in rows)
    )
    pq.write_table(pa.Table.from_pylist(rows), folder / "eval" / "qa.parquet")
    # The layout of a datasets save_to_disk folder: Arrow stream files beside JSON metadata.
    saved = folder / "eval" / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist(rows)
    with (
        pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (saved / "dataset_info.json").write_text("{}")
    (saved / "state.json").write_text("{}")


@pytest.mark.parametrize("path", ["eval/qa.jsonl", "eval/qa.csv", "eval/qa.parquet", "eval/saved"])
def test_eval_sets_load_from_jsonl_csv_parquet_and_a_saved_datasets_folder(tmp_path: Path, path: str) -> None:
    _write_sets(tmp_path)
    texts = load_eval_texts(tmp_path, EvalSetSpec(name="qa", path=path, fields=["question"]))
    assert texts == [QUESTION, "short one"]
    every_string = load_eval_texts(tmp_path, EvalSetSpec(name="qa", path=path))
    assert QUESTION in every_string and "at 12:40" in every_string


def test_an_eval_set_outside_the_specs_folder_or_with_a_wrong_field_is_refused(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    _write_sets(specs)
    outside = tmp_path / "secret.jsonl"
    outside.write_text(json.dumps({"question": "secret"}))
    (specs / "eval" / "link.jsonl").symlink_to(outside)
    with pytest.raises(EvalSetError, match="leaves the specs folder"):
        load_eval_texts(specs, EvalSetSpec(name="x", path="eval/link.jsonl"))
    with pytest.raises(ValueError, match="inside the specs folder"):
        EvalSetSpec(name="x", path="../secret.jsonl")
    with pytest.raises(EvalSetError, match=r"qa.jsonl has no column\(s\) \['prompt'\]"):
        load_eval_texts(specs, EvalSetSpec(name="x", path="eval/qa.jsonl", fields=["prompt"]))
    with pytest.raises(EvalSetError, match="does not exist"):
        load_eval_texts(specs, EvalSetSpec(name="x", path="eval/missing.jsonl"))


def test_build_index_reads_every_named_set(tmp_path: Path) -> None:
    _write_sets(tmp_path)
    spec = DecontaminationSpec(
        eval_sets=[EvalSetSpec(name="a", path="eval/qa.jsonl"), EvalSetSpec(name="b", path="eval/saved")]
    )
    index = build_index(tmp_path, spec)
    assert index.texts_per_set == {"a": 4, "b": 4}
    hit = index.find([textwrap.dedent(QUESTION)])[0]
    assert hit is not None and hit.sets == ["a", "b"]


def test_the_pipeline_drops_a_leaked_example_or_flags_it_and_the_check_blocks(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    import dagster as dg
    import duckdb
    import yaml

    from synth_pipelines.assets.checks import no_eval_contamination
    from synth_pipelines.spec.text import example_text
    from tests.materialize import DOMAIN, materialize_domain, up_to

    warehouse = tmp_path / "wh"
    graph = [*up_to("validated_examples"), no_eval_contamination]

    def run(blocked: bool = False) -> tuple[dict, dg.AssetCheckEvaluation]:
        result = materialize_domain(graph, warehouse, scripted_schemas_dir, target=10, raise_on_error=False)
        assert result.success != blocked  # a failed blocking check fails the run
        meta = next(
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "validated_examples"
        )
        return meta, result.get_asset_check_evaluations()[0]

    def accepted() -> list[tuple[str, str]]:
        glob = f"{warehouse}/validated_examples/*/*.parquet"
        return duckdb.sql(
            f"select example_id, example_json from read_parquet('{glob}') order by 1"
        ).fetchall()

    meta, check = run()
    # The shipped spec checks against its held-out API tasks: scripted rows share nothing with them.
    assert meta["decontamination"].value["overlapping_examples"] == {"api_tasks_heldout": 0}
    assert check.passed and check.metadata["measured"].value == 0
    before = accepted()
    assert len(before) >= 3
    leaked_id, leaked_json = before[1]
    (scripted_schemas_dir / "eval" / "leak.jsonl").write_text(
        json.dumps({"text": example_text(json.loads(leaked_json))}) + "\n"
    )
    spec_path = scripted_schemas_dir / f"{DOMAIN}.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["decontamination"] = {"eval_sets": [{"name": "leak", "path": "eval/leak.jsonl"}]}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    meta, check = run()
    after = accepted()
    assert [i for i, _ in after] == [i for i, _ in before if i != leaked_id]  # that one, and only it
    assert meta["decontamination"].value["overlapping_examples"] == {"leak": 1}
    assert meta["rejected_by_stage"].value.get("decontamination") == 1
    assert check.passed and check.metadata["measured"].value == 0

    spec["decontamination"]["action"] = "flag"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    meta, check = run(blocked=True)
    assert [i for i, _ in accepted()] == [i for i, _ in before]  # kept, but:
    assert list(meta["decontamination"].value["flagged"]) == [leaked_id]
    assert not check.passed and check.metadata["measured"].value == 1
    assert check.metadata["detail"].value["examples"][0]["example_id"] == leaked_id
