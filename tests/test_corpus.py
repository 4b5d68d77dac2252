"""Corpus-grounded seeds: a folder of mixed files made here, each sampling strategy doing what it is
named for, the same sample for the same seed, and the chunk provenance reaching validated_examples
and the dataset card."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth_pipelines.generation.corpus import CorpusError, load_chunks, sample_chunks, text_chunks
from synth_pipelines.spec.model import SeedSource
from synth_pipelines.warehouse.storage import Warehouse
from tests.materialize import DOMAIN, materialize_domain, up_to


def make_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "notes").mkdir(parents=True)
    # Parquet: tickets with a team (by_field) and a created_at time column (recent).
    pq.write_table(
        pa.table(
            {
                "title": [f"Ticket {i}: the /orders endpoint returns 500 for page {i}" for i in range(12)],
                "team": ["payments", "search", "accounts"] * 4,
                "created_at": [datetime(2026, 1, 1 + i, tzinfo=UTC) for i in range(12)],
            }
        ),
        corpus / "tickets.parquet",
    )
    (corpus / "faq.csv").write_text(
        "question,answer\n"
        "How do I rotate an API key?,Call POST /keys/rotate with the old key\n"
        "Why is my webhook not firing?,Check the endpoint returns 200 within 5 seconds\n"
    )
    (corpus / "events.jsonl").write_text(
        "\n".join(json.dumps({"event": f"deploy of service {n} failed"}) for n in ("auth", "billing")) + "\n"
    )
    (corpus / "notes" / "runbook.md").write_text(
        "# Runbook\n\nWhen Stripe webhooks fail, Acme Corp on-call checks the 2026-03-01 release.\n\n"
        "Restart the queue worker.\n\n" + "Long paragraph. " * 80
    )
    (corpus / "notes" / "plain.txt").write_text("a short plain note about retries\n")
    (corpus / "image.png").write_bytes(b"\x89PNG")  # not a corpus file: ignored
    return corpus


def fake_embed(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-letters embedding (the diverse strategy only needs distances)."""
    out = np.zeros((len(texts), 26), dtype=np.float32)
    for i, text in enumerate(texts):
        for ch in text.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_text_is_split_into_paragraph_chunks_with_offsets() -> None:
    text = "First para.\n\nSecond para.\n\n" + "x" * 250
    spans = text_chunks(text, 100)
    assert text[spans[0][0] : spans[0][1]].startswith("First para.")
    assert all(e - s <= 100 for s, e in spans)
    assert "".join(text[s:e] for s, e in spans).replace("\n", "").endswith("x" * 250)


def test_every_file_kind_is_chunked_with_stable_ids(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    chunks = load_chunks(SeedSource(corpus=str(corpus), chunk_chars=300))
    kinds = {Path(c.source).suffix for c in chunks}
    assert kinds == {".parquet", ".csv", ".jsonl", ".md", ".txt"}
    tickets = [c for c in chunks if c.source.endswith("tickets.parquet")]
    assert len(tickets) == 12 and [c.start for c in tickets] == list(range(12))
    runbook = [c for c in chunks if c.source.endswith("runbook.md")]
    text = (corpus / "notes" / "runbook.md").read_text()
    assert all(text[c.start : c.end] == c.text for c in runbook)
    assert load_chunks(SeedSource(corpus=str(corpus), chunk_chars=300)) == chunks  # stable
    assert max(c.entities for c in runbook) >= 3  # Stripe, Acme Corp, 2026-03-01


def test_the_same_corpus_has_the_same_ids_in_any_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids and provenance name files as the spec names the corpus (a relative path stays relative),
    so a clone elsewhere gets the same chunk ids, hence the same seeds, examples and cached replies."""
    found = []
    for checkout in ("a", "b/deeper"):
        (tmp_path / checkout).mkdir(parents=True)
        make_corpus(tmp_path / checkout)
        monkeypatch.chdir(tmp_path / checkout)
        found.append(load_chunks(SeedSource(corpus="corpus", chunk_chars=300)))
    assert [(c.chunk_id, c.source) for c in found[0]] == [(c.chunk_id, c.source) for c in found[1]]
    assert {c.source for c in found[0]} >= {"corpus/notes/runbook.md", "corpus/tickets.parquet"}


def test_strategies_do_what_they_are_named_for_and_repeat_for_a_seed(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    old = time.time() - 30 * 86400
    for f in (corpus / "faq.csv", corpus / "events.jsonl", corpus / "notes" / "plain.txt"):
        os.utime(f, (old, old))

    def pick(**options: Any) -> list[str]:
        source = SeedSource(corpus=str(corpus), chunk_chars=300, **options)
        return [c.chunk_id for c in sample_chunks(load_chunks(source), source, fake_embed)]

    for strategy, extra in (
        ("diverse", {}),
        ("entity_rich", {}),
        ("recent", {}),
        ("by_field", {"field": "team"}),
    ):
        first = pick(strategy=strategy, sample_size=4, seed=7, **extra)
        assert first == pick(strategy=strategy, sample_size=4, seed=7, **extra), strategy
        assert len(set(first)) == len(first)

    # recent: only chunks newer than the median timestamp
    source = SeedSource(corpus=str(corpus), strategy="recent", sample_size=50, field="created_at")
    chunks = load_chunks(source)
    stamps = sorted(c.timestamp for c in chunks if c.timestamp)
    median = stamps[len(stamps) // 2 - 1] if len(stamps) % 2 == 0 else stamps[len(stamps) // 2]
    recent = sample_chunks(chunks, source)
    assert recent and all(c.timestamp and c.timestamp > median for c in recent)
    # by_field: an even share per value
    source = SeedSource(corpus=str(corpus), strategy="by_field", field="team", sample_size=6)
    teams = [c.field_value for c in sample_chunks(load_chunks(source), source)]
    assert sorted(teams) == ["accounts", "accounts", "payments", "payments", "search", "search"]
    # entity_rich: the chunks with the most entities first
    source = SeedSource(corpus=str(corpus), strategy="entity_rich", sample_size=3)
    everything = load_chunks(source)
    rich = sample_chunks(everything, source)
    assert min(c.entities for c in rich) >= sorted((c.entities for c in everything), reverse=True)[2]
    # diverse: no two picks are the same text, and a different seed can start elsewhere
    source = SeedSource(corpus=str(corpus), strategy="diverse", sample_size=5)
    diverse = sample_chunks(everything, source, fake_embed)
    assert len({c.text for c in diverse}) == 5


def test_bad_corpora_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_chunks(SeedSource(corpus=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.png").write_bytes(b"x")
    with pytest.raises(CorpusError, match="no Parquet, CSV, JSONL, Markdown or text"):
        load_chunks(SeedSource(corpus=str(tmp_path / "empty")))
    corpus = make_corpus(tmp_path)
    with pytest.raises(CorpusError, match="not a column"):
        load_chunks(SeedSource(corpus=str(corpus), strategy="by_field", field="nope"))


def test_grounded_seeds_carry_their_chunk_to_validated_examples_and_the_card(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends: Any
) -> None:
    corpus = make_corpus(tmp_path)
    spec_path = scripted_schemas_dir / f"{DOMAIN}.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data.pop("seed_problems", None)
    data["seed_source"] = {"corpus": str(corpus), "strategy": "by_field", "field": "team", "sample_size": 3}
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    warehouse = tmp_path / "warehouse"
    result = materialize_domain(up_to("validated_examples"), warehouse, scripted_schemas_dir, target=12)
    assert result.success
    wh = Warehouse(warehouse)
    chunks = wh.read_partition("corpus_chunks", DOMAIN).to_pylist()
    sampled = {c["chunk_id"]: c for c in chunks if c["sampled"]}
    assert len(sampled) == 3 and {c["field_value"] for c in sampled.values()} == {
        "payments",
        "search",
        "accounts",
    }
    seeds = wh.read_partition("seed_problems", DOMAIN).to_pylist()
    assert {s["chunk_id"] for s in seeds} == set(sampled) and all(s["source"] == "corpus" for s in seeds)
    validated = wh.read_partition("validated_examples", DOMAIN).to_pylist()
    assert validated
    for row in validated:
        chunk = sampled[row["chunk_id"]]
        assert (
            row["chunk_source"] == chunk["source"].split("://")[-1] or row["chunk_source"] == chunk["source"]
        )
        assert (row["chunk_start"], row["chunk_end"]) == (chunk["start"], chunk["end"])
    # The generation prompts showed the chunk's text.
    prompts = [r.messages[-1].content for b in scripted_backends.values() for r in b.requests]
    assert any("Source excerpt" in p and "Ticket" in p for p in prompts)
    from synth_pipelines.exports.training import dataset_card_text

    card = dataset_card_text(wh, wh.materialized_spec(DOMAIN), "sft")  # type: ignore[arg-type]
    assert "## Sources" in card and "tickets.parquet" in card
    # Same seed, same sample: a rerun asks no model again.
    again = materialize_domain(up_to("seed_problems"), warehouse, scripted_schemas_dir)
    assert again.asset_materializations_for_node("seed_problems")[0].metadata["model_calls"].value == 0


def test_a_corpus_in_a_bucket_reads_the_same_as_on_disk(tmp_path: Path, s3_bucket: str) -> None:
    """An fsspec URL: tables through DuckDB on the fsspec filesystem, text files through fsspec."""
    import boto3

    corpus = make_corpus(tmp_path)
    s3 = boto3.client("s3")
    for path in corpus.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"docs/{path.relative_to(corpus)}")
    local = load_chunks(SeedSource(corpus=str(corpus), chunk_chars=300))
    remote = load_chunks(SeedSource(corpus=f"s3://{s3_bucket}/docs", chunk_chars=300))
    assert [(Path(c.source).name, c.start, c.end, c.text) for c in remote] == [
        (Path(c.source).name, c.start, c.end, c.text) for c in local
    ]
    assert all(c.source.startswith(f"s3://{s3_bucket}/docs/") for c in remote)
