"""``make bench-text``: the built-in degenerate-text checks on text nobody here wrote.

Prints, per kind of real human-written text from this machine (``real_corpus``: standard-library
source and docstrings, command output, man pages, package READMEs, data files, logs) and per
held-out kind (``heldout_corpus``: third-party source, shell scripts, /etc configuration, Markdown
docs, SQL, and a fresh draw of the rest), the share rejected (false positives), each with the reason;
then recall per fault kind of the derailed set (two seeds), and the checks' cost per sample next to
one ``str.split`` pass over the same text (a baseline measured in the same run). The last lines are
``text_false_positive_rate=``, ``text_heldout_false_positive_rate=`` and ``text_degenerate_recall=``.
"""

from __future__ import annotations

import time
from collections import Counter

from synth_pipelines.testing.text_corpus import Sample, degenerate_corpus, heldout_corpus, real_corpus
from synth_pipelines.validation.text_checks import degenerate_text


def false_positives(name: str, samples: list[Sample]) -> float:
    total = Counter(s.kind for s in samples)
    rejected: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for s in samples:
        found = degenerate_text(s.text)
        if found:
            rejected[s.kind] += 1
            reasons.update(r.split(" (")[0] for r in found)
    print(f"\n{name}: {len(samples)} samples")
    for kind, n in sorted(total.items()):
        print(f"  {kind:<20} {n:>5}  rejected {rejected[kind]:>3} ({rejected[kind] / n:.2%})")
    print(f"  reasons: {dict(reasons)}")
    return sum(rejected.values()) / len(samples)


def recall(seed: int) -> float:
    samples = degenerate_corpus(seed=seed)
    missed = Counter(s.kind for s in samples if not degenerate_text(s.text))
    per_kind = Counter(s.kind for s in samples)
    print(f"\nderailed set, seed {seed}: {len(samples)} samples")
    for kind, n in per_kind.items():
        print(f"  {kind:<20} caught {1 - missed[kind] / n:.1%}")
    return 1 - sum(missed.values()) / len(samples)


def main() -> None:
    real = real_corpus()
    held = heldout_corpus()
    fp = false_positives("real corpus (the kinds the checks were written against)", real)
    held_fp = false_positives("held-out corpus (kinds never looked at while writing them)", held)
    rec = min(recall(0), recall(7))
    texts = [s.text for s in real]
    started = time.perf_counter()
    for text in texts:
        text.split()
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    for text in texts:
        degenerate_text(text)
    checks = time.perf_counter() - started
    mean_chars = sum(map(len, texts)) / len(texts)
    print(
        f"\ncost: {checks / len(texts) * 1000:.3f} ms per sample of {mean_chars:.0f} characters, "
        f"{checks / baseline:.0f}x one str.split pass"
    )
    print(f"text_false_positive_rate={fp:.4f}")
    print(f"text_heldout_false_positive_rate={held_fp:.4f}")
    print(f"text_degenerate_recall={rec:.4f}")


if __name__ == "__main__":
    main()
