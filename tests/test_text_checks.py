"""The built-in degenerate-text checks have a false-positive budget (issue 22): on human-written
structured text from this machine that nobody here wrote (standard-library source and docstrings,
command output, man pages, package READMEs, CSV/JSON/YAML data, logs) they reject at most 1%, and
on a held-out draw of kinds never looked at while writing them (third-party source, shell scripts,
/etc configuration, Markdown docs, SQL) at most 1% too, while catching at least 95% of derailed
output (repetition loops, placeholders, random tokens, truncation, lorem ipsum, runaways)."""

from __future__ import annotations

from collections import Counter

import pytest

from synth_pipelines.testing.text_corpus import Sample, degenerate_corpus, heldout_corpus, real_corpus
from synth_pipelines.validation.rule_checks import degenerate_reasons

FALSE_POSITIVE_BUDGET = 0.01
MIN_RECALL = 0.95


def _rejected(samples: list[Sample]) -> list[tuple[Sample, list[str]]]:
    out = []
    for sample in samples:
        reasons = degenerate_reasons({"text": sample.text})
        if reasons:
            out.append((sample, reasons))
    return out


@pytest.fixture(scope="module")
def real() -> list[Sample]:
    return real_corpus()


def test_real_text_from_this_machine_is_not_degenerate(real: list[Sample]) -> None:
    kinds = Counter(s.kind for s in real)
    # Enough of each kind to mean something (the sources are on every machine of this kind).
    assert len(real) >= 800 and all(
        kinds[k] >= 40 for k in ("python_source", "docstring", "readme", "data_file")
    )
    rejected = _rejected(real)
    rate = len(rejected) / len(real)
    detail = [(s.kind, s.origin, r) for s, r in rejected]
    print(f"\nreal corpus: {len(real)} samples {dict(kinds)}, rejected {len(rejected)} ({rate:.2%})")
    assert rate <= FALSE_POSITIVE_BUDGET, detail


@pytest.fixture(scope="module")
def held() -> list[Sample]:
    return heldout_corpus()


def test_held_out_kinds_of_text_stay_within_the_budget(held: list[Sample]) -> None:
    rejected = _rejected(held)
    rate = len(rejected) / len(held)
    print(f"\nheld-out corpus: {len(held)} samples, rejected {len(rejected)} ({rate:.2%})")
    assert rate <= FALSE_POSITIVE_BUDGET, [(s.kind, s.origin, r) for s, r in rejected]


def test_real_text_is_not_taken_for_the_generation_prompts_scaffolding(
    real: list[Sample], held: list[Sample]
) -> None:
    """Every sample of both corpora as a field value of a pipeline row of each shipped spec (and of
    the judge benchmark's six and the eleven unseen domains), under a cell of its matrix: the
    scaffolding check, the domain's identifier included, must stay quiet on human-written text
    (measured 2026-12-06: 0 of 34,692 checks on 12 specs; 0 of 66,355 on 23 with the identifier)."""
    import itertools
    import random
    from pathlib import Path

    from synth_pipelines.spec.loading import load_spec
    from synth_pipelines.spec.text import normalize_text
    from synth_pipelines.validation.rule_checks import scaffold_patterns

    root = Path(__file__).resolve().parent.parent
    paths = [
        *sorted((root / "schemas").glob("*.yaml")),
        *sorted((root / "tests/data/judge_bench").glob("*.yaml")),
        *sorted((root / "tests/data/unseen_domains").glob("*/*.yaml")),
    ]
    specs = [load_spec(p).spec for p in paths]
    # Each spec's matrix cells, listed once: a sample is checked under one drawn at random.
    cells = [
        [dict(zip(dims, c, strict=True)) for c in itertools.product(*dims.values())]
        for dims in (spec.matrix.dimensions if spec.matrix else {} for spec in specs)
    ]
    rng = random.Random(7)
    flagged, checks = [], 0
    for sample in real + held:
        text = normalize_text(sample.text)
        for spec, spec_cells in zip(specs, cells, strict=True):
            checks += 1
            patterns = scaffold_patterns(list(spec.fields), rng.choice(spec_cells), spec.domain)
            if any(p.search(text) for p in patterns):
                flagged.append((spec.domain, sample.kind, sample.origin))
    assert len(specs) >= 20 and checks >= 20 * len(real)
    assert len(flagged) / checks <= FALSE_POSITIVE_BUDGET, flagged


@pytest.mark.parametrize("seed", [0, 7])
def test_derailed_output_is_caught(seed: int) -> None:
    degenerate = degenerate_corpus(seed=seed)
    missed = [s for s in degenerate if not degenerate_reasons({"text": s.text})]
    recall = 1 - len(missed) / len(degenerate)
    by_kind = Counter(s.kind for s in missed)
    print(
        f"\ndegenerate set (seed {seed}): {len(degenerate)} samples, recall {recall:.2%}, "
        f"missed {dict(by_kind)}"
    )
    assert recall >= MIN_RECALL, [(s.kind, s.text[:80]) for s in missed]
    # No fault kind is left to luck: each is caught at least 80% of the time on its own.
    per_kind = Counter(s.kind for s in degenerate)
    assert all(by_kind[k] <= 0.2 * n for k, n in per_kind.items()), by_kind


def test_whitespace_and_alignment_are_not_degeneracy() -> None:
    kubectl = (
        "NAME                        READY   STATUS             RESTARTS   AGE\n"
        "api-7d9f8b6c5-x2k4q         1/1     Running            0          3d\n"
        "worker-5c6d7e8f9-abcde      0/1     CrashLoopBackOff   12         3d\n"
        "db-0                        1/1     Running            0          10d"
    )
    code = "def f(x):\n        if x:\n                return [\n                    x,\n                ]\n"
    table = "| col | value |\n|-----|-------|\n| a   | 1     |\n| b   | 2     |"
    log = "2026-12-03T10:00:00.123Z INFO  worker started pid=4242 id=1700000000000123"
    for text in (kubectl, code, table, log):
        assert degenerate_reasons({"text": text}) == [], text
