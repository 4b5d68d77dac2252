"""Corpus-grounded seeds: the user's own documents, chunked and sampled, so that seed problems (and
the examples made from them) are grounded in real content.

A corpus is a folder, a file or an fsspec URL of Parquet, CSV, JSONL, Markdown or plain text. Tables
are read with DuckDB (one chunk per row: its text columns joined as ``column: value``; ``start`` and
``end`` are the row number); text files are split on blank lines into chunks of at most
``chunk_chars`` characters (``start``/``end`` are character offsets in the file). Every chunk has a
stable id (a hash of its source and offsets) and a timestamp: the value of ``seed_source.field``
for tables when it is a time column, else the file's modification time.

Sampling is deterministic for a given ``seed_source.seed``:

* ``diverse``: farthest-point sampling over the chunks' embeddings (from a seeded start);
* ``recent``: only chunks newer than the median timestamp, sampled at random;
* ``entity_rich``: the chunks with the most named entities, numbers and dates (a regex proxy);
* ``by_field``: an equal share per distinct value of ``seed_source.field``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from synth_pipelines.spec.model import SeedSource
from synth_pipelines.warehouse.tables import CORPUS_CHUNKS

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
# Chunks the diverse strategy embeds at most (a seeded random subset of a bigger corpus).
DIVERSE_POOL = 5000
ENTITY = re.compile(r"\b(?:[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+|[A-Z]{2,}|\d{4}-\d{2}-\d{2}|\d+(?:[.,]\d+)?%?)\b")


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the path and what to do."""


class Chunk(BaseModel):
    chunk_id: str
    source: str
    kind: str
    start: int
    end: int
    text: str
    timestamp: datetime | None = None
    field_value: str | None = None
    entities: int = 0


def _filesystem(location: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return fs, path


def _files(location: str) -> tuple[Any, list[str], dict[str, str]]:
    """The filesystem, the corpus files (as the filesystem names them) and each file's name as the
    spec wrote the corpus: ``<corpus>/<path inside it>``. Ids and provenance use that name, so the
    same corpus gives the same chunk ids (and seeds, examples, cached replies) in any checkout."""
    fs, root = _filesystem(location)
    if not fs.exists(root):
        raise CorpusError(f"seed_source.corpus {location!r} does not exist; point it at a folder or file")
    single = fs.isfile(root)
    paths = [root] if single else sorted(fs.find(root))
    usable = [
        p
        for p in paths
        if PurePosixPath(p).suffix.lower() in TABLE_SUFFIXES
        or PurePosixPath(p).suffix.lower() in TEXT_SUFFIXES
    ]
    if not usable:
        raise CorpusError(
            f"seed_source.corpus {location!r} holds no Parquet, CSV, JSONL, Markdown or text files"
        )
    base = PurePosixPath(root)
    names = {
        p: location if single else f"{location.rstrip('/')}/{PurePosixPath(p).relative_to(base)}"
        for p in usable
    }
    return fs, usable, names


def chunk_id(source: str, start: int, end: int) -> str:
    return "k_" + hashlib.sha256(f"{source}|{start}|{end}".encode()).hexdigest()[:12]


def _mtime(fs: Any, path: str) -> datetime | None:
    try:
        value = fs.modified(path)
    except (NotImplementedError, OSError, AttributeError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def text_chunks(text: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) character spans: paragraphs (blank-line separated) packed up to ``max_chars``;
    a longer paragraph is cut at ``max_chars``."""
    spans: list[tuple[int, int]] = []
    for m in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", text, flags=re.S):
        start, end = m.start(), m.end()
        while end - start > max_chars:
            spans.append((start, start + max_chars))
            start += max_chars
        if spans and end - spans[-1][0] <= max_chars and text[spans[-1][1] : start].strip() == "":
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _table_rows(fs: Any, path: str, fmt: str) -> pa.Table:
    import duckdb

    conn = duckdb.connect()
    try:
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol in ("file", "local"):
            location = path
        else:  # DuckDB reads through the fsspec filesystem (no httpfs download)
            conn.register_filesystem(fs)
            location = fs.unstrip_protocol(path)
        reader = {"parquet": "read_parquet", "csv": "read_csv_auto", "json": "read_json_auto"}[fmt]
        return conn.sql(f"SELECT * FROM {reader}(?)", params=[location]).to_arrow_table()
    except duckdb.Error as e:
        raise CorpusError(
            f"seed_source.corpus: cannot read {path} as {fmt}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        conn.close()


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def load_chunks(source: SeedSource) -> list[Chunk]:
    """Every chunk of the corpus, in a stable order (files by path, then position)."""
    fs, paths, names = _files(source.corpus)
    chunks: list[Chunk] = []
    for path in paths:
        name = names[path]
        suffix = PurePosixPath(path).suffix.lower()
        mtime = _mtime(fs, path)
        if suffix in TEXT_SUFFIXES:
            with fs.open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            for start, end in text_chunks(text, source.chunk_chars):
                body = text[start:end]
                chunks.append(
                    Chunk(chunk_id=chunk_id(name, start, end), source=name, kind="text", start=start, end=end,
                          text=body, timestamp=mtime, entities=len(ENTITY.findall(body)))
                )  # fmt: skip
            continue
        table = _table_rows(fs, path, TABLE_SUFFIXES[suffix])
        text_columns = [
            f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        for i, row in enumerate(table.to_pylist()):
            body = "\n".join(f"{c}: {row[c]}" for c in text_columns if row.get(c))[: source.chunk_chars]
            if not body.strip():
                continue
            field_value = row.get(source.field) if source.field else None
            stamp = _as_time(field_value) if source.field else None
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(name, i, i + 1),
                    source=name,
                    kind="row",
                    start=i,
                    end=i + 1,
                    text=body,
                    timestamp=stamp or mtime,
                    field_value=None if field_value is None else str(field_value),
                    entities=len(ENTITY.findall(body)),
                )
            )
    if not chunks:
        raise CorpusError(f"seed_source.corpus {source.corpus!r}: no text found in {len(paths)} file(s)")
    if source.strategy == "by_field":
        if not source.field:
            raise CorpusError("seed_source.strategy by_field needs seed_source.field (a column name)")
        if all(c.field_value is None for c in chunks):
            raise CorpusError(
                f"seed_source.field {source.field!r} is not a column of any table in the corpus"
            )
    return chunks


Embed = Callable[[list[str]], np.ndarray]


def sample_chunks(chunks: Sequence[Chunk], source: SeedSource, embed: Embed | None = None) -> list[Chunk]:
    """``source.sample_size`` chunks picked by ``source.strategy``, deterministic for ``source.seed``."""
    rng = random.Random(source.seed)
    n = min(source.sample_size, len(chunks))
    if source.strategy == "recent":
        dated = [c for c in chunks if c.timestamp is not None]
        if not dated:
            raise CorpusError("seed_source.strategy recent: no chunk has a timestamp (set seed_source.field)")
        stamps = sorted(c.timestamp for c in dated if c.timestamp is not None)
        median = stamps[len(stamps) // 2] if len(stamps) % 2 else stamps[len(stamps) // 2 - 1]
        newer = [c for c in dated if c.timestamp is not None and c.timestamp > median]
        return rng.sample(newer, min(n, len(newer)))
    if source.strategy == "entity_rich":
        order = list(chunks)
        rng.shuffle(order)  # ties broken at random, reproducibly
        return sorted(order, key=lambda c: -c.entities)[:n]
    if source.strategy == "by_field":
        groups: dict[str, list[Chunk]] = {}
        for c in chunks:
            if c.field_value is not None:
                groups.setdefault(c.field_value, []).append(c)
        for members in groups.values():
            rng.shuffle(members)
        picked: list[Chunk] = []
        keys = sorted(groups)
        while len(picked) < n and any(groups.values()):
            for key in keys:
                if groups[key] and len(picked) < n:
                    picked.append(groups[key].pop())
        return picked
    # diverse: farthest-point sampling from a seeded start
    if embed is None:
        raise CorpusError("seed_source.strategy diverse needs an embedding model")
    pool = list(chunks) if len(chunks) <= DIVERSE_POOL else rng.sample(list(chunks), DIVERSE_POOL)
    vectors = np.asarray(embed([c.text for c in pool]), dtype=np.float32)
    first = rng.randrange(len(pool))
    chosen = [first]
    distance = 1.0 - vectors @ vectors[first]
    for _ in range(n - 1):
        distance[chosen] = -np.inf
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, 1.0 - vectors @ vectors[nxt])
    return [pool[i] for i in chosen]


def chunks_table(chunks: Sequence[Chunk], sampled: Sequence[Chunk]) -> pa.Table:
    """Every chunk, with the sample marked (``sampled``, ``sample_rank`` in sampling order)."""
    rank = {c.chunk_id: i for i, c in enumerate(sampled)}
    rows = [
        {**c.model_dump(), "sampled": c.chunk_id in rank, "sample_rank": rank.get(c.chunk_id)} for c in chunks
    ]
    return pa.Table.from_pylist(rows, schema=CORPUS_CHUNKS)
