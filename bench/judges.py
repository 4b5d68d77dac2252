"""``make bench-judges``: how often the gate agrees with hand labels (Cohen's kappa).

Runs the gate (the spec's rules, then the validator panel of ``SYNTH_PROFILE``, default ``local``)
over the labelled sets in ``tests/data/labelled/`` (one per shipped domain, half good, half bad),
and prints per domain:

* kappa of the rules alone, and of rules + panel at the profile's calibrated threshold;
* the best threshold for the set (in-sample, so optimistic) and, fairer, the threshold calibrated on
  the *other* domain's set applied to this one (cross-domain);
* each extra signal tried, with and without it, cross-domain:
  - ``on_topic``: the cosine similarity (MiniLM) between the matrix problem and the example's text,
    as a second gate next to the consensus (shipped as ``on_topic_threshold``).

The last line is ``judge_kappa=`` (all sets pooled, the profile's gate as shipped).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
    with tempfile.TemporaryDirectory() as state:
        client = build_client(profile, Path(state) / "cache.sqlite", modes_path=Path(state) / "modes.sqlite")
        for file in files:
            spec = resolve_thresholds(load_spec(REPO / "schemas" / f"{file.stem}.yaml").spec, profile)[0]
            rows = load_labelled(file)
            judges = list(profile.roles.validators)
            scores[file.stem] = score_rows(spec, rows, client, judges, pair_similarity)

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

    pooled = [x for s in scores.values() for x in s]
    truth = [x.good for x in pooled]
    shipped = agreement(gate_accepts(pooled, shipped_threshold, shipped_on_topic), truth, shipped_threshold)
    print(f"\nall sets, shipped gate: {shipped.summary()}")
    print(f"all sets, best consensus threshold: {best_threshold(pooled).summary()}  [in-sample]")
    print(f"all sets, best with on_topic: {best_thresholds(pooled).summary()}  [in-sample]")
    print(f"judge_kappa={shipped.kappa:.3f}")


if __name__ == "__main__":
    main()
