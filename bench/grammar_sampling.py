"""``make bench-grammar``: grammar-constrained generation on the bundled SmolLM2, the grammar checked
after sampling (:mod:`synth_pipelines.llm.lazy_grammar`, what the product runs) next to
llama-cpp-python's own order (the grammar applied to the whole vocabulary before every token), in
one run, alternating, on the same requests.

The requests are the generation requests of every shipped spec (its seed problems under the first
combination of its matrix conditions, the spec's own schema, temperature and token limit), so the
grammars are the ones the pipeline sends. For each order it reports completion tokens per second
of wall time, the CPU seconds per call, and how many replies parse and validate against their
schema. The last line is ``grammar_lazy_speedup=<lazy tokens/s / eager tokens/s>``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema

from synth_pipelines.generation.generate_rows import PlannedItem, generation_request, max_tokens_for
from synth_pipelines.llm import backends, lazy_grammar
from synth_pipelines.llm.config import load_profile
from synth_pipelines.llm.replies import extract_json
from synth_pipelines.llm.types import CompletionRequest
from synth_pipelines.spec.loading import load_spec

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


def shipped_requests(per_spec: int) -> list[CompletionRequest]:
    requests: list[CompletionRequest] = []
    for path in sorted((REPO / "schemas").glob("*.yaml")):
        spec = load_spec(path).spec
        if spec.type == "tool-use":
            continue  # its replies are tool plans, not one schema's object
        dims = spec.matrix.dimensions if spec.matrix else {}
        # Specs without listed seeds have them written by the model first; a stand-in problem here.
        seeds = spec.seed_problems or [
            f"A realistic case for {spec.domain}, number {k + 1}" for k in range(per_spec)
        ]
        for k, seed in enumerate(seeds[:per_spec]):
            problem, tagged = (seed, {}) if isinstance(seed, str) else (seed.problem, seed.allowed())
            # The first value of each dimension the seed fits: a cell the pipeline would plan.
            conditions = {
                d: str(sorted(tagged[d])[0] if d in tagged else values[0]) for d, values in dims.items()
            }
            item = PlannedItem(
                example_id=f"bench_{k}",
                cell_id="bench",
                seed_id=f"s{k}",
                problem=problem,
                conditions=conditions,
                complexity="medium",
                sample_index=k,
                seed=1000 + k,
            )
            requests.append(
                generation_request(spec, item, MODEL, spec.hints.temperature, max_tokens_for(spec))
            )
    return requests


def run(backend: Any, requests: list[CompletionRequest]) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    tokens = valid = 0
    for request in requests:
        out = backend.complete(request)
        tokens += out.completion_tokens
        try:
            jsonschema.validate(extract_json(out.text), request.json_schema or {})
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    wall = time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "tokens_per_s": tokens / wall,
        "cpu_per_call": (usage.ru_utime + usage.ru_stime - cpu0) / len(requests),
        "valid": valid,
        "calls": len(requests),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-spec", type=int, default=3, help="requests per shipped spec")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    requests = shipped_requests(args.per_spec)
    config = load_profile("local").models[MODEL]
    lazy = backends.LlamaCppBackend(MODEL, config)
    eager = backends.LlamaCppBackend(MODEL, config)
    lazy.complete(requests[0])  # load the model outside the timing
    # The eager backend's model is built as plain llama_cpp.Llama: llama-cpp-python's own order.
    with mock.patch.object(lazy_grammar, "LazyGrammarLlama", lazy_grammar.Llama):
        eager.complete(requests[0])
    print(f"{len(requests)} generation requests from the shipped specs, {args.rounds} rounds, alternating")
    totals: dict[str, list[dict[str, float]]] = {"eager": [], "lazy": []}
    for _ in range(args.rounds):
        for name, backend in (("eager", eager), ("lazy", lazy)):
            totals[name].append(run(backend, requests))
    for name, results in totals.items():
        rate = sum(r["tokens_per_s"] for r in results) / len(results)
        cpu = sum(r["cpu_per_call"] for r in results) / len(results)
        valid = sum(int(r["valid"]) for r in results)
        calls = sum(int(r["calls"]) for r in results)
        label = "grammar after sampling (lazy)" if name == "lazy" else "grammar first (llama-cpp-python)"
        print(f"{label:<36} {rate:6.1f} tokens/s  {cpu:5.2f} s CPU per call  valid {valid}/{calls}")
    lazy_rate = sum(r["tokens_per_s"] for r in totals["lazy"])
    eager_rate = sum(r["tokens_per_s"] for r in totals["eager"])
    print(f"grammar_lazy_speedup={lazy_rate / eager_rate:.2f}")


if __name__ == "__main__":
    main()
