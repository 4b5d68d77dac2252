"""``make bench-judges``: how often the gate agrees with hand labels, on domains it was not tuned on.

The labelled sets are ``tests/data/judge_bench/<domain>.jsonl`` (six domains of different shapes:
code, logs and command output, multi-turn conversation, math QA, API calls, classification; 40
rows each, half bad, most of the bad ones subtle), each with the spec a user would write from the
matching template (``<domain>.yaml``, no threshold edits). Every set is scored in two forms:

* ``pipeline``: with the problem and matrix conditions the generator would have been given;
* ``external``: the same examples with neither, as a user's own dataset arrives.

For every signal the gate is "the spec's rules (and the built-in text checks) pass, and the signal
reaches a threshold". Each figure is **leave-one-domain-out**: the threshold is the one with the
highest Cohen's kappa on the five other domains, applied to the sixth; the pooled figure is kappa
over all held-out decisions. Signals (``JUDGE_SIGNALS`` picks a subset, comma-separated):

* ``rules``: the rules alone (no threshold);
* ``panel``: the sampled consensus of the profile's judge panel (``SYNTH_PROFILE``, default local;
  ``JUDGE_PANEL_FORMS=pipeline`` skips it on external rows, its slowest part);
* ``on_topic``: MiniLM cosine similarity of the example to its problem (to the spec's description
  for external rows);
* ``field_agreement``: the lowest MiniLM cosine similarity between two text fields of the example
  (a cheap stand-in for NLI consistency: there is no NLI model on these machines);
* ``yes_no`` / ``rating``: the embedded judges' token probabilities on a consistency question
  (``synth_pipelines.validation.signals``), averaged over the llama.cpp judges (pipeline rows only:
  a forward pass per row and model is the dearest part of the bench);
* ``embed_lr``: a logistic regression over MiniLM embeddings of the problem and example, trained
  on the five other domains' labels;
* ``stacked``: a logistic regression over the scalar signals above, trained the same way.

Model answers are cached under ``.bench_cache/judges`` (delete it to re-ask). Then the gate the
profile ships, per form: the rules, the panel (when it runs) and the on-topic minimum at their
shipped values (calibrated on other sets, so held out here) and the cross-field agreement minimum
at its leave-one-domain-out value (its design default was fitted on these sets). The last lines
are ``judge_kappa_lodo_external=`` and ``judge_kappa_lodo=`` (pipeline rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from synth_pipelines.llm.backends import LlamaCppBackend
from synth_pipelines.llm.config import load_profile
from synth_pipelines.llm.embeddings import embed_texts, pair_similarity
from synth_pipelines.llm.factory import build_client
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import example_text
from synth_pipelines.validation.calibration import (
    GateScore,
    LabelledRow,
    agreement,
    cohen_kappa,
    gate_accepts,
    load_labelled,
    lodo_decisions,
    resolved_spec,
    score_rows,
)
from synth_pipelines.validation.signals import expected_rating, yes_probability

REPO = Path(__file__).resolve().parent.parent
SETS = REPO / "tests" / "data" / "judge_bench"
CACHE = REPO / ".bench_cache" / "judges"
FORMS = ("pipeline", "external")
SCALAR_SIGNALS = ("panel", "on_topic", "field_agreement", "yes_no", "rating")
ALL_SIGNALS = ("rules", *SCALAR_SIGNALS, "embed_lr", "stacked")

Values = dict[str, list[float | None]]  # domain -> one value per row (None: rules rejected it)


def external_form(row: LabelledRow) -> LabelledRow:
    """The row as a user's own dataset would hold it: the example only."""
    return row.model_copy(update={"problem": "", "conditions": {}, "complexity": "medium"})


class DiskCache:
    """Token-probability answers by (model, prompt inputs), so a rerun asks nothing twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key_parts: Sequence[Any], compute: Callable[[], float]) -> float:
        key = hashlib.sha256(json.dumps(list(key_parts), sort_keys=True, default=str).encode()).hexdigest()
        if key not in self.data:
            self.data[key] = compute()
        return self.data[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data))


def held_out_probabilities(
    features: dict[str, np.ndarray], labels: dict[str, np.ndarray], keep: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per domain, P(good) from a logistic regression trained on the other domains' kept rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict[str, np.ndarray] = {}
    for domain in features:
        train = [d for d in features if d != domain]
        x = np.vstack([features[d][keep[d]] for d in train])
        y = np.concatenate([labels[d][keep[d]] for d in train])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(x, y)
        out[domain] = model.predict_proba(features[domain])[:, 1]
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wanted = [s for s in os.environ.get("JUDGE_SIGNALS", ",".join(ALL_SIGNALS)).split(",") if s]
    unknown = sorted(set(wanted) - set(ALL_SIGNALS))
    if unknown:
        sys.exit(f"JUDGE_SIGNALS names unknown signals {unknown}; known: {', '.join(ALL_SIGNALS)}")
    # The sampled panel is the slowest signal (two judges per row, ~20 answers a minute on 2 cores):
    # JUDGE_PANEL_FORMS=pipeline leaves the external form without it.
    panel_forms = os.environ.get("JUDGE_PANEL_FORMS", ",".join(FORMS)).split(",")
    profile = load_profile(os.environ.get("SYNTH_PROFILE", "local"))
    files = sorted(SETS.glob("*.jsonl"))
    print(f"panel: profile {profile.name!r}, judges {[v.model for v in profile.roles.validators]}")
    print(f"sets: {', '.join(f.stem for f in files)} (tests/data/judge_bench)")
    CACHE.mkdir(parents=True, exist_ok=True)
    probs = DiskCache(CACHE / f"token_probabilities-{profile.name}.json")
    client = build_client(profile, CACHE / f"llm-{profile.name}.sqlite", modes_path=CACHE / "modes.sqlite")
    judges = list(profile.roles.validators)
    chat = [b for j in judges if isinstance(b := client.backends[j.model], LlamaCppBackend)]

    specs: dict[str, DomainSpec] = {}
    rows: dict[str, list[LabelledRow]] = {}
    for file in files:
        specs[file.stem] = resolved_spec(file.with_suffix(".yaml"), profile).spec
        rows[file.stem] = load_labelled(file)

    timings: dict[str, float] = {}
    results: dict[str, dict[str, Values]] = {}  # form -> signal -> domain -> values
    gates: dict[str, dict[str, list[GateScore]]] = {}  # form -> domain -> scores
    for form in FORMS:
        gates[form], results[form] = {}, {s: {} for s in SCALAR_SIGNALS}
        for domain, spec in specs.items():
            shown = rows[domain] if form == "pipeline" else [external_form(r) for r in rows[domain]]
            started = time.perf_counter()
            use_panel = "panel" in wanted and form in panel_forms
            scores = score_rows(
                spec, shown, client if use_panel else None, judges, pair_similarity, embed_texts
            )
            timings["panel"] = timings.get("panel", 0.0) + time.perf_counter() - started
            gates[form][domain] = scores
            judged = [i for i, s in enumerate(scores) if s.rules_ok]
            results[form]["panel"][domain] = [s.consensus if s.rules_ok else None for s in scores]
            results[form]["on_topic"][domain] = [s.on_topic if s.rules_ok else None for s in scores]
            results[form]["field_agreement"][domain] = [
                s.field_agreement if s.rules_ok else None for s in scores
            ]
            for name, fn in (("yes_no", yes_probability), ("rating", expected_rating)):
                # Pipeline rows only: a forward pass per row and model is the bench's dearest part.
                if name not in wanted or not chat or form != "pipeline":
                    continue
                started = time.perf_counter()
                values: list[float | None] = []
                for i, row in enumerate(shown):
                    if i not in judged:
                        values.append(None)
                        continue
                    parts = [
                        probs.get(
                            [name, m.name, spec.domain, row.problem, row.conditions, row.example],
                            partial(fn, m, spec, row.problem, row.example, row.conditions),
                        )
                        for m in chat
                    ]
                    values.append(sum(parts) / len(parts))
                results[form][name][domain] = values
                probs.save()
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
    client.flush()

    truth = {d: [r.label == "good" for r in rows[d]] for d in specs}
    for form in FORMS:
        report_form(form, specs, rows, gates[form], results[form], truth, wanted)

    print("\nseconds per signal (both forms, cached answers cost nothing):")
    for name, seconds in timings.items():
        print(f"  {name:<16} {seconds:.0f}")
    pooled_truth = [t for d in specs for t in truth[d]]
    kappas: dict[str, float] = {}
    for form in FORMS:
        name, decided = shipped_gate(gates[form], truth, specs, form)
        print(f"\nshipped gate of profile {profile.name!r}, {form} rows: {name}")
        for d in specs:
            print(f"  {d:<20} kappa {cohen_kappa(decided[d], truth[d]):.3f}")
        pooled = [x for d in specs for x in decided[d]]
        print(f"  pooled: {agreement(pooled, pooled_truth, None).summary()}")
        kappas[form] = cohen_kappa(pooled, pooled_truth)
    print(f"judge_kappa_lodo_external={kappas['external']:.3f}")
    print(f"judge_kappa_lodo={kappas['pipeline']:.3f}")


def report_form(
    form: str,
    specs: dict[str, DomainSpec],
    rows: dict[str, list[LabelledRow]],
    gates: dict[str, list[GateScore]],
    results: dict[str, Values],
    truth: dict[str, list[bool]],
    wanted: list[str],
) -> None:
    """One table per form: LODO kappa per domain and pooled, one column per signal."""
    columns: dict[str, dict[str, list[bool]]] = {}
    if "rules" in wanted:
        columns["rules"] = {d: [s.rules_ok for s in gates[d]] for d in specs}
    for name in SCALAR_SIGNALS:
        values = results.get(name, {})
        if (
            name in wanted
            and len(values) == len(specs)
            and any(v is not None for vs in values.values() for v in vs)
        ):
            columns[name] = lodo_decisions(gates, values)
    keep = {d: np.array([s.rules_ok for s in gates[d]]) for d in specs}
    labels = {d: np.array(truth[d], dtype=int) for d in specs}
    if "embed_lr" in wanted:
        features = {}
        for d in specs:
            shown = rows[d] if form == "pipeline" else [external_form(r) for r in rows[d]]
            anchor = [r.problem or specs[d].description for r in shown]
            body = [example_text(r.example) for r in shown]
            a, b = embed_texts(anchor), embed_texts(body)
            features[d] = np.hstack([b, a * b])
        p = held_out_probabilities(features, labels, keep)
        columns["embed_lr"] = lodo_decisions(gates, {d: [float(x) for x in p[d]] for d in specs})
    stacked_inputs = [n for n in SCALAR_SIGNALS if n in columns]
    if "stacked" in wanted and len(stacked_inputs) >= 2:
        features = {
            d: np.array(
                [
                    [results[n][d][i] if results[n][d][i] is not None else 0.0 for n in stacked_inputs]
                    for i in range(len(rows[d]))
                ]
            )
            for d in specs
        }
        p = held_out_probabilities(features, labels, keep)
        columns["stacked"] = lodo_decisions(gates, {d: [float(x) for x in p[d]] for d in specs})

    print(f"\n{form} rows: leave-one-domain-out kappa (threshold from the other five domains)")
    header = f"  {'domain':<20}" + "".join(f"{c:>16}" for c in columns)
    print(header)
    for d in specs:
        cells = "".join(f"{cohen_kappa(columns[c][d], truth[d]):>16.3f}" for c in columns)
        print(f"  {d:<20}{cells}")
    pooled_truth = [t for d in specs for t in truth[d]]
    cells = "".join(
        f"{cohen_kappa([x for d in specs for x in columns[c][d]], pooled_truth):>16.3f}" for c in columns
    )
    print(f"  {'pooled':<20}{cells}")
    for c in columns:
        decided = [x for d in specs for x in columns[c][d]]
        print(f"  {c}: {agreement(decided, pooled_truth, None).summary()}")


def shipped_gate(
    gates: dict[str, list[GateScore]],
    truth: dict[str, list[bool]],
    specs: dict[str, DomainSpec],
    form: str,
) -> tuple[str, dict[str, list[bool]]]:
    """The gate the profile ships, as ``domain_schema`` resolves it for each spec: thresholds
    calibrated elsewhere (the panel's, the on-topic minimum) at their shipped values; the
    cross-field agreement minimum, whose design default was fitted on these very sets, at its
    leave-one-domain-out value instead. External rows get what ``synth validate`` runs: no
    on-topic gate (they have no problem to be on topic with)."""
    validation = next(iter(specs.values())).validation
    decisions = {d: [s.rules_ok for s in gates[d]] for d in gates}
    parts = ["rules"]

    def narrow(extra: dict[str, list[bool]]) -> None:
        for d in gates:
            decisions[d] = [a and b for a, b in zip(decisions[d], extra[d], strict=True)]

    if validation.judges_run:
        narrow({d: gate_accepts(gates[d], validation.threshold) for d in gates})
        parts.append(f"panel >= {validation.threshold}")
    if validation.min_on_topic > -1 and form == "pipeline":
        narrow(
            {
                d: [s.on_topic is not None and s.on_topic >= validation.min_on_topic for s in gates[d]]
                for d in gates
            }
        )
        parts.append(f"on_topic >= {validation.min_on_topic}")
    if validation.min_field_agreement > -1:
        narrow(lodo_decisions(gates, {d: [s.field_agreement for s in gates[d]] for d in gates}))
        parts.append("field_agreement (LODO threshold)")
    return " + ".join(parts), decisions


if __name__ == "__main__":
    main()
