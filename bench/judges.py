"""``make bench-judges``: how often the gate agrees with hand labels (Cohen's kappa).

Runs the gate (the spec's rules, then the validator panel of ``SYNTH_PROFILE``, default ``local``)
over the labelled sets in ``tests/data/labelled/`` (one per shipped domain, half good, half bad),
and prints per domain:

* kappa of the rules alone, and of rules + panel at the profile's calibrated threshold;
* the best threshold for the set (in-sample, so optimistic) and, fairer, the threshold calibrated on
  the *other* domain's set applied to this one (cross-domain);
* each extra signal tried, with and without it, cross-domain:
  - ``on_topic``: the cosine similarity (MiniLM) between the matrix problem and the example's text,
    as a second gate next to the consensus (shipped as ``on_topic_threshold``);
  - token-probability signals of the embedded models (``synth_pipelines.validation.signals``), each
    in place of the sampled consensus: ``yes_no`` (P(yes) vs P(no)), ``rating_1_5`` (the expected
    digit), ``base_loglik`` (mean log-likelihood of the example under the base model, i.e. a
    perplexity filter), ``pairwise`` (P(preferred) over a known-good example of the same domain,
    both orders). Needs a profile with llama.cpp validators; skipped otherwise.

The last line is ``judge_kappa=`` (all sets pooled, the profile's gate as shipped).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from synth_pipelines.llm.backends import LlamaCppBackend
from synth_pipelines.llm.config import load_profile
from synth_pipelines.llm.embeddings import pair_similarity
from synth_pipelines.llm.factory import build_client
from synth_pipelines.spec.model import DESIGN_CONSENSUS_THRESHOLD, load_spec
from synth_pipelines.validation.calibration import (
    GateScore,
    agreement,
    best_threshold,
    best_thresholds,
    gate_accepts,
    load_labelled,
    resolve_thresholds,
    score_rows,
)
from synth_pipelines.validation.signals import (
    expected_rating,
    mean_logprob,
    pairwise_preference,
    yes_probability,
)

REPO = Path(__file__).resolve().parent.parent
LABELLED = REPO / "tests" / "data" / "labelled"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    profile = load_profile(os.environ.get("SYNTH_PROFILE", "local"))
    calibrated = profile.roles.calibration
    shipped_threshold = calibrated.consensus_threshold if calibrated else DESIGN_CONSENSUS_THRESHOLD
    on_topic_setting = calibrated.on_topic_threshold if calibrated else None
    shipped_on_topic = -1.0 if on_topic_setting is None else on_topic_setting
    files = sorted(LABELLED.glob("*.jsonl"))
    print(f"panel: profile {profile.name!r}, validators {[v.model for v in profile.roles.validators]}")
    print(
        f"shipped: consensus >= {shipped_threshold}, on_topic >= {shipped_on_topic} "
        f"({'calibrated' if calibrated else 'design default'})"
    )
    scores: dict[str, list[GateScore]] = {}
    signals: dict[str, dict[str, dict[int, float]]] = {}  # signal -> domain -> row -> value
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as state:
        client = build_client(profile, Path(state) / "cache.sqlite", modes_path=Path(state) / "modes.sqlite")
        for file in files:
            spec = resolve_thresholds(load_spec(REPO / "schemas" / f"{file.stem}.yaml").spec, profile)[0]
            rows = load_labelled(file)
            judges = list(profile.roles.validators)
            scores[file.stem] = score_rows(spec, rows, client, judges, pair_similarity)
            chat = [b for j in judges if isinstance(b := client.backends[j.model], LlamaCppBackend)]
            for name, value in signal_functions(spec, rows, chat).items():
                started = time.perf_counter()
                judged = [i for i, x in enumerate(scores[file.stem]) if x.rules_ok]
                signals.setdefault(name, {})[file.stem] = {i: value(i) for i in judged}
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

    for domain, s in scores.items():
        truth = [x.good for x in s]
        others = [x for d, other in scores.items() if d != domain for x in other]
        print(f"\n{domain} ({len(s)} rows, {sum(truth)} good)")
        print(f"  rules alone:                 {agreement([x.rules_ok for x in s], truth, None).summary()}")
        accepted_here = gate_accepts(s, shipped_threshold, shipped_on_topic)
        shipped_here = agreement(accepted_here, truth, shipped_threshold)
        print(f"  shipped gate:                {shipped_here.summary()}")
        print(f"  rules + panel, best here:    {best_threshold(s).summary()}  [in-sample]")
        if others:
            t = best_threshold(others).threshold or 0.0
            print(f"  rules + panel, cross-domain: {agreement(gate_accepts(s, t), truth, t).summary()}")
            joint = best_thresholds(others)
            t2, m2 = joint.threshold or 0.0, joint.on_topic_threshold
            crossed = agreement(gate_accepts(s, t2, -1.0 if m2 is None else m2), truth, t2)
            crossed.on_topic_threshold = m2
            print(f"  + on_topic, cross-domain:    {crossed.summary()}")
        good = [x.on_topic for x in s if x.good and x.on_topic is not None]
        bad = [x.on_topic for x in s if not x.good and x.on_topic is not None]
        if good and bad:
            mean_good, mean_bad = sum(good) / len(good), sum(bad) / len(bad)
            print(f"  on_topic similarity: good mean {mean_good:.3f}, bad mean {mean_bad:.3f}")

    report_signals(scores, signals, timings)

    pooled = [x for s in scores.values() for x in s]
    truth = [x.good for x in pooled]
    shipped = agreement(gate_accepts(pooled, shipped_threshold, shipped_on_topic), truth, shipped_threshold)
    print(f"\nall sets, shipped gate: {shipped.summary()}")
    print(f"all sets, best consensus threshold: {best_threshold(pooled).summary()}  [in-sample]")
    print(f"all sets, best with on_topic: {best_thresholds(pooled).summary()}  [in-sample]")
    print(f"judge_kappa={shipped.kappa:.3f}")


def signal_functions(spec, rows, models: list[LlamaCppBackend]) -> dict[str, Callable[[int], float]]:  # type: ignore[no-untyped-def]
    """Each token-probability signal as row index -> value, averaged over the models it applies to
    (the chat-capable judges; the base-model perplexity only under models without a chat template)."""
    if not models:
        return {}
    base = [m for m in models if not m.config.chat_template] or models
    good = [i for i, r in enumerate(rows) if r.label == "good"]

    def reference(i: int) -> tuple[str, dict]:  # type: ignore[type-arg]
        # A known-good example of the same domain, never the row itself (leave one out).
        j = next(g for g in good if g != i)
        return rows[j].problem, rows[j].example

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return {
        "yes_no": lambda i: mean(
            [yes_probability(m, spec, rows[i].problem, rows[i].example) for m in models]
        ),
        "rating_1_5": lambda i: mean(
            [expected_rating(m, spec, rows[i].problem, rows[i].example) for m in models]
        ),
        "base_loglik": lambda i: mean([mean_logprob(m, rows[i].problem, rows[i].example) for m in base]),
        "pairwise": lambda i: mean(
            [pairwise_preference(m, spec, (rows[i].problem, rows[i].example), reference(i)) for m in models]
        ),
    }


def with_signal(scores: list[GateScore], values: dict[int, float]) -> list[GateScore]:
    """The gate scores with ``values`` in place of the panel's consensus (rows the rules reject
    keep None, as they were never judged)."""
    return [s.model_copy(update={"consensus": values.get(i)}) for i, s in enumerate(scores)]


def report_signals(
    scores: dict[str, list[GateScore]],
    signals: dict[str, dict[str, dict[int, float]]],
    timings: dict[str, float],
) -> None:
    """Per signal and domain, cross-domain (thresholds from the other domains' sets): rules + the
    signal in place of the sampled consensus, and the same with the on-topic gate."""
    if not signals:
        print("\ntoken-probability signals: skipped (no llama.cpp validator in this profile)")
        return
    print("\ntoken-probability signals, each in place of the sampled consensus (cross-domain kappa):")
    for name, by_domain in signals.items():
        print(f"\n{name} ({timings.get(name, 0.0):.0f} s)")
        pooled: list[GateScore] = []
        for domain, s in scores.items():
            gated = with_signal(s, by_domain[domain])
            pooled += gated
            others = [x for d, o in scores.items() if d != domain for x in with_signal(o, by_domain[d])]
            truth = [x.good for x in s]
            good = [v for i, v in by_domain[domain].items() if s[i].good]
            bad = [v for i, v in by_domain[domain].items() if not s[i].good]
            means = (
                f"good mean {sum(good) / max(1, len(good)):.3f}, bad mean {sum(bad) / max(1, len(bad)):.3f}"
            )
            if not others:
                print(f"  {domain}: {means}")
                continue
            t = best_threshold(others).threshold or 0.0
            alone = agreement(gate_accepts(gated, t), truth, t)
            joint = best_thresholds(others)
            t2, m2 = joint.threshold or 0.0, joint.on_topic_threshold
            topic = agreement(gate_accepts(gated, t2, -1.0 if m2 is None else m2), truth, t2)
            topic.on_topic_threshold = m2
            print(f"  {domain}: {means}")
            print(f"    rules + {name}:            {alone.summary()}")
            print(f"    rules + on_topic + {name}: {topic.summary()}")
        print(f"  all sets, best in-sample: {best_thresholds(pooled).summary()}")


if __name__ == "__main__":
    main()
