"""Decontamination: generated rows that overlap the evaluation sets a spec names, by word n-grams.

The evaluation sets are tables on disk inside the specs folder (Parquet, CSV, JSONL, or the Arrow
files of a ``datasets`` folder saved with ``save_to_disk``). Text is normalized (NFKC, case-folded,
split into runs of letters and digits), and a generated row overlaps a set when it shares one word
n-gram with it: 13 words by default, as in the GPT-3 and Llama decontamination studies. An eval
text shorter than ``ngram`` words but at least ``min_ngram`` long counts whole (NeMo Curator's
``min_ngram_size`` rule), so a short question is still found.

It stays linear: words are hashed once, the n-gram hashes of a batch of texts are computed with
numpy as a polynomial over the word hashes (a handful of array operations whatever the batch size),
and membership is a binary search in the eval sets' sorted hashes. No pair of rows is compared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from synth_pipelines.spec.model import DecontaminationSpec, EvalSetSpec, resolve_in_specs_folder
from synth_pipelines.spec.text import flatten_value

WORD = re.compile(r"[^\W_]+")
# An odd 64-bit multiplier: the n-gram hash is sum(word_hash[k] * P**(n-1-k)) mod 2**64.
_P = np.uint64(0x9E3779B97F4A7C15)
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
ARROW_SUFFIXES = {".arrow"}
BATCH = 4096  # texts hashed at once: bounds the memory of the word arrays at any row count
MAX_SETS = 64  # one bit each in a uint64 mask


class EvalSetError(ValueError):
    """An eval set that cannot be read; the message names the spec key, the file and what to do."""


def words(text: str) -> list[str]:
    """The normalized words of ``text``: NFKC, case-folded, runs of letters and digits."""
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _word_hashes(tokens: Sequence[str]) -> np.ndarray:
    # Python's str hash: 64 bits, the same for a word everywhere in one process (the index and
    # the rows it is queried with are always hashed by the same process).
    return np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)


def _gram_hashes(hashes: np.ndarray, owner: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``size`` consecutive words that stays inside one text, and the
    position where each starts."""
    count = len(hashes) - size + 1
    if count <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    grams = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            grams = grams * _P + hashes[k : k + count]
    starts = np.flatnonzero(owner[:count] == owner[size - 1 :])
    return grams[starts], starts


class Overlap(BaseModel):
    """One generated text that shares an n-gram with an eval set: which set, and the words."""

    sets: list[str]
    ngram: str


class NgramIndex:
    """The n-grams of the eval sets, queried with batches of generated texts."""

    def __init__(self, ngram: int = 13, min_ngram: int = 8):
        if not 1 <= min_ngram <= ngram:
            raise ValueError(f"decontamination: min_ngram {min_ngram} must be between 1 and ngram {ngram}")
        self.ngram, self.min_ngram = ngram, min_ngram
        self.set_names: list[str] = []
        self.texts_per_set: dict[str, int] = {}
        self._pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, set_name: str, texts: Iterable[str]) -> None:
        """Index ``texts`` as eval set ``set_name`` (call once per set, before :meth:`find`)."""
        if set_name in self.set_names:
            raise ValueError(f"decontamination: eval set {set_name!r} is named twice")
        if len(self.set_names) == MAX_SETS:
            raise ValueError(f"decontamination: at most {MAX_SETS} eval sets")
        bit = np.uint64(1 << len(self.set_names))
        self.set_names.append(set_name)
        count = 0
        for batch in _batches(texts):
            count += len(batch)
            tokenized = [words(t) for t in batch]
            long = [w for w in tokenized if len(w) >= self.ngram]
            hashes, owner = _flatten(long)
            grams, _ = _gram_hashes(hashes, owner, self.ngram)
            self._pending.setdefault(self.ngram, []).append((grams, np.full(len(grams), bit)))
            for w in tokenized:  # shorter texts count whole
                if self.min_ngram <= len(w) < self.ngram:
                    whole, _ = _gram_hashes(_word_hashes(w), np.zeros(len(w), np.int64), len(w))
                    self._pending.setdefault(len(w), []).append((whole, np.full(len(whole), bit)))
        self.texts_per_set[set_name] = count
        self._keys = {}

    def _frozen(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per n-gram length: the sorted unique hashes and, for each, the mask of sets holding it."""
        if not self._keys and self._pending:
            for size, parts in self._pending.items():
                keys = np.concatenate([k for k, _ in parts])
                masks = np.concatenate([m for _, m in parts])
                unique, inverse = np.unique(keys, return_inverse=True)
                merged = np.zeros(len(unique), dtype=np.uint64)
                np.bitwise_or.at(merged, inverse, masks)
                self._keys[size] = (unique, merged)
        return self._keys

    @property
    def empty(self) -> bool:
        return not self._frozen()

    def find(self, texts: Sequence[str]) -> list[Overlap | None]:
        """For each text, the eval sets it shares an n-gram with (and the first such n-gram), or None."""
        found: list[Overlap | None] = [None] * len(texts)
        index = self._frozen()
        for offset in range(0, len(texts), BATCH):
            tokenized = [words(t) for t in texts[offset : offset + BATCH]]
            hashes, owner = _flatten(tokenized)
            flat = [w for ws in tokenized for w in ws]
            masks = np.zeros(len(tokenized), dtype=np.uint64)
            first: dict[int, tuple[int, int]] = {}
            for size, (keys, set_masks) in sorted(index.items(), reverse=True):
                grams, starts = _gram_hashes(hashes, owner, size)
                if not len(grams) or not len(keys):
                    continue
                at = np.minimum(np.searchsorted(keys, grams), len(keys) - 1)
                hit = np.flatnonzero(keys[at] == grams)
                if not len(hit):
                    continue
                rows = owner[starts[hit]]
                np.bitwise_or.at(masks, rows, set_masks[at[hit]])
                for row, start in zip(rows.tolist(), starts[hit].tolist(), strict=True):
                    first.setdefault(row, (start, size))
            for row, (start, size) in first.items():
                sets = [name for bit, name in enumerate(self.set_names) if int(masks[row]) >> bit & 1]
                found[offset + row] = Overlap(sets=sets, ngram=" ".join(flat[start : start + size]))
        return found


def _batches(texts: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _flatten(tokenized: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """All words' hashes end to end, and the text each word belongs to."""
    lengths = np.fromiter((len(w) for w in tokenized), dtype=np.int64, count=len(tokenized))
    owner = np.repeat(np.arange(len(tokenized), dtype=np.int64), lengths)
    return _word_hashes([t for w in tokenized for t in w]), owner


# ---- eval sets on disk -----------------------------------------------------------------------


def eval_set_path(specs_dir: Path | str, eval_set: EvalSetSpec) -> Path:
    """The eval set's file or folder, which must stay inside the specs folder (symlinks resolved)."""
    root, path = resolved = resolve_in_specs_folder(specs_dir, eval_set.path)
    if not resolved.inside:
        raise EvalSetError(
            f"decontamination.eval_sets[{eval_set.name}].path {eval_set.path!r} leaves the specs folder "
            f"{root}; copy the eval set inside it"
        )
    if not path.exists():
        raise EvalSetError(
            f"decontamination.eval_sets[{eval_set.name}].path: {path} does not exist; point it at a "
            "Parquet, CSV or JSONL file, or a folder of them (a datasets save_to_disk folder works)"
        )
    return path


def _read_table(path: Path) -> pa.Table:
    if path.suffix.lower() in ARROW_SUFFIXES:  # datasets' save_to_disk: Arrow IPC streams
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                return pa.ipc.open_file(source).read_all()
    import duckdb

    reader = {"parquet": "read_parquet", "csv": "read_csv_auto", "json": "read_json_auto"}[
        TABLE_SUFFIXES[path.suffix.lower()]
    ]
    with duckdb.connect() as conn:
        return conn.sql(f"SELECT * FROM {reader}(?)", params=[str(path)]).to_arrow_table()


def load_eval_texts(specs_dir: Path | str, eval_set: EvalSetSpec) -> list[str]:
    """Every text of the eval set's compared fields (each field of each row on its own)."""
    root = eval_set_path(specs_dir, eval_set)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    usable = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES.keys() | ARROW_SUFFIXES]
    usable = [p for p in usable if p.name not in ("dataset_info.json", "state.json", "dataset_dict.json")]
    if not usable:
        raise EvalSetError(
            f"decontamination.eval_sets[{eval_set.name}]: {root} holds no Parquet, CSV, JSONL or Arrow file"
        )
    texts: list[str] = []
    for path in usable:
        try:
            table = _read_table(path)
        except Exception as e:  # any reader's error: say which file, not a stack trace
            raise EvalSetError(
                f"decontamination.eval_sets[{eval_set.name}]: cannot read {path}: {str(e).splitlines()[0]}"
            ) from None
        columns = eval_set.fields or [
            f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise EvalSetError(
                f"decontamination.eval_sets[{eval_set.name}].fields: {path} has no column(s) {missing}; "
                f"it has {table.column_names}"
            )
        for column in columns:
            texts.extend(flatten_value(v) for v in table.column(column).to_pylist() if v is not None)
    return texts


def build_index(specs_dir: Path | str, spec: DecontaminationSpec) -> NgramIndex:
    index = NgramIndex(spec.ngram, spec.min_ngram)
    for eval_set in spec.eval_sets:
        index.add(eval_set.name, load_eval_texts(specs_dir, eval_set))
    return index


def decontamination_summary(
    spec: DecontaminationSpec, index: NgramIndex, overlaps: Mapping[str, int], flagged: Mapping[str, str]
) -> dict[str, Any]:
    """What the gate checked against and found, for metadata and the dataset card."""
    decon = spec
    return {
        "eval_sets": {name: index.texts_per_set[name] for name in index.set_names},
        "ngram": decon.ngram,
        "min_ngram": decon.min_ngram,
        "action": decon.action,
        "overlapping_examples": {name: overlaps.get(name, 0) for name in index.set_names},
        "flagged": dict(list(flagged.items())[:20]),
    }
