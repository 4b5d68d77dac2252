"""``synth plan``: what a run of a domain will call, spend and take, before any call is made.

The plan rebuilds the run's own requests where it can and asks the response cache about each:
- seed problems: the spec's list, or the generator's first seed request (cached or not);
- the matrix: ``build_matrix`` plus technique rows, and every derivation request (a cached
  derivation's reply also gives the derived problem, so its items' prompts are exact);
- raw generations: every planned item's exact request (model, messages, schema, seed), so a partly
  cached rerun is planned at its real cost; items in the in-flight parts are resumed, free.

What cannot be rebuilt before the run (a judge's prompt holds the generated example; early stops
depend on the scores) is modelled from the domain's ``llm_usage`` history: judge calls per raw row
(pre-judge rejections and early stops included), generation calls per fresh item (parse retries),
program calls per scored example, tokens per call and latency per call. Without history the priors
are the design's: one call per item, every judge on every row, prompt tokens from the prompt text
(4 characters a token) and completion tokens from half the schema's bounds. Dollars come from the
profile's prices; wall time from the models' concurrency ceilings and the per-call latency.

Items whose generation is cached are assumed judged before (their judge calls cached too), and the
program is assumed recompiled from scratch whenever any item is new.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from synth_pipelines.generation.generate_rows import (
    PlannedItem,
    finished_keys,
    generation_request,
    iter_plan_items,
    max_tokens_for,
)
from synth_pipelines.generation.matrix import MatrixCell, asked_conditions, build_matrix
from synth_pipelines.generation.seeds import (
    SeedProblem,
    build_seed_problems,
    classify_request,
    seed_requests,
    seeds_per_combination,
    seeds_to_classify,
)
from synth_pipelines.generation.techniques import (
    attach_problems,
    derivation_request,
    derivations,
    parse_derived,
    plan_technique_rows,
)
from synth_pipelines.learning.feedback import feedback_targets
from synth_pipelines.llm.client import LLMClient
from synth_pipelines.llm.types import CompletionRequest
from synth_pipelines.spec.example_schema import example_json_schema
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.validation.calibration import ResolvedSpec, resolve_thresholds
from synth_pipelines.validation.consensus import JUDGE_MAX_TOKENS, judge_messages, resolve_judges
from synth_pipelines.warehouse.inflight import InflightRows
from synth_pipelines.warehouse.storage import SCORE_FILE, Warehouse
from synth_pipelines.warehouse.tables import RAW_GENERATIONS
from synth_pipelines.warehouse.usage import PLAN_FILE, UsageRecord, usage_history

CHARS_PER_TOKEN = 4.0
# With no history: the share of rows a run accepts (for the program's split) and seconds per call
# beyond decoding (network, queueing).
PRIOR_PASS_RATE = 0.75
PRIOR_CALL_OVERHEAD_S = 0.3
# Placeholder problem length for items whose seeds do not exist yet (only their token count matters).
PLACEHOLDER_PROBLEM = "x" * 120
# An endpoint check: a one-line question and a tiny JSON reply.
PROBE_PROMPT_TOKENS = 40
PROBE_COMPLETION_TOKENS = 12


class AssetPlan(BaseModel):
    """One asset's forecast."""

    asset: str
    units: int = Field(description="items, rows, derivations or examples the asset works on")
    cached_units: int = Field(description="units the cache (or resumed parts) already answers")
    calls: int = Field(description="model calls expected (cache hits excluded)")
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    wall_s: float
    models: list[str]
    basis: str = Field(description="how the numbers were reached: exact requests, history, priors")

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Plan(BaseModel):
    """A whole run's forecast; saved to the state folder so the run can report how close it came."""

    domain: str
    profile: str
    target_count: int
    created_at: str
    assets: list[AssetPlan]
    notes: list[str] = Field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(a.calls for a in self.assets)

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.assets)

    @property
    def tokens(self) -> int:
        return sum(a.tokens for a in self.assets)

    @property
    def wall_s(self) -> float:
        return sum(a.wall_s for a in self.assets)

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 6),
            "wall_s": round(self.wall_s, 1),
        }


class _Rates(BaseModel):
    """Per-call averages of one asset, from history or priors."""

    calls_per_unit: float
    prompt_tokens: float
    completion_tokens: float
    latency_s: float
    from_history: bool


def _history_rates(records: Sequence[UsageRecord], per: str) -> _Rates | None:
    """Averages over the recorded runs. ``per`` is ``fresh`` (model calls per unit that needed the
    model: generation, derivations, seed rounds) or ``all`` (calls plus cache hits per unit: judges
    and the program, whose calls are cached or not together with their rows)."""
    # Endpoint checks are not the asset's work: planned on their own line (Planner.endpoint_checks).
    calls = sum(r.model_calls - r.probe_calls for r in records)
    answered = sum(r.model_calls - r.probe_calls + r.cache_hits for r in records)
    units = sum(r.fresh_units if per == "fresh" else r.units for r in records)
    if units <= 0 or answered <= 0 or (per == "fresh" and calls <= 0):
        return None
    return _Rates(
        calls_per_unit=(calls if per == "fresh" else answered) / units,
        prompt_tokens=sum(r.prompt_tokens for r in records) / answered,
        completion_tokens=sum(r.completion_tokens for r in records) / answered,
        latency_s=sum(r.latency_s for r in records) / max(1, calls) if calls else 0.0,
        from_history=True,
    )


def _history_shares(records: Sequence[UsageRecord], models: list[str]) -> dict[str, float] | None:
    """How the recorded calls split over ``models`` (a panel with early stops calls its later judges
    less; a chain's fallbacks rarely), or None without a record of it."""
    totals = dict.fromkeys(models, 0.0)
    for record in records:
        for model, calls in json.loads(record.calls_by_model or "{}").items():
            if model in totals:
                totals[model] += calls
    total = sum(totals.values())
    return {m: c / total for m, c in totals.items()} if total > 0 else None


def _tokens_of(request: CompletionRequest) -> int:
    chars = sum(len(m.content) for m in request.messages) + len(json.dumps(request.json_schema or {}))
    return math.ceil(chars / CHARS_PER_TOKEN)


def _expected_example(spec: DomainSpec) -> dict[str, Any]:
    """A stand-in example at half of every field's bound: what a judge prompt carries on average."""
    props = example_json_schema(spec).get("properties", {})
    out: dict[str, Any] = {}
    for name, node in props.items():
        if node.get("enum"):
            out[name] = node["enum"][0]
        elif node.get("type") == "string":
            out[name] = "x" * max(1, int(node.get("maxLength", 200)) // 2)
        elif node.get("type") == "array":
            out[name] = ["x" * 20] * max(1, int(node.get("maxItems", 4)) // 2)
        else:
            out[name] = 0
    return out


class Planner:
    """Builds a :class:`Plan` for one domain against one client (profile, cache) and warehouse."""

    def __init__(self, spec: DomainSpec, warehouse: Warehouse, client: LLMClient, *, seed_count: int = 5):
        self.spec = spec
        self.wh = warehouse
        self.client = client
        self.seed_count = seed_count
        self.history = usage_history(warehouse, spec.domain)
        self.notes: list[str] = []

    # ------------------------------------------------------------------ helpers
    def _rates(self, asset: str, per: str, prior: _Rates) -> _Rates:
        found = _history_rates(self.history.get(asset, []), per)
        return found or prior

    def _requests_line(
        self,
        asset: str,
        requests: list[CompletionRequest],
        hits: int,
        *,
        basis: str,
        completion_tokens: float | None = None,
    ) -> AssetPlan:
        """The line of an asset whose calls are known requests (``hits`` of them cached), one per
        unit, on the first generator: per-call rates from history, else from the requests (their
        mean prompt and ``completion_tokens``, by default half their token limit)."""
        prior = _Rates(
            calls_per_unit=1,
            prompt_tokens=sum(_tokens_of(r) for r in requests) / max(1, len(requests)),
            completion_tokens=completion_tokens
            if completion_tokens is not None
            else sum(r.max_tokens for r in requests) / max(1, len(requests)) / 2,
            latency_s=0,
            from_history=False,
        )
        return self._line(
            asset,
            units=len(requests),
            cached=hits,
            fresh_units=len(requests) - hits,
            rates=self._rates(asset, "fresh", prior),
            models=self.client.generator_chain()[:1],
            basis=basis,
        )

    def _line(
        self,
        asset: str,
        *,
        units: int,
        cached: int,
        fresh_units: float,
        rates: _Rates,
        models: list[str],
        basis: str,
    ) -> AssetPlan:
        calls = round(fresh_units * rates.calls_per_unit)
        prompt = round(calls * rates.prompt_tokens)
        completion = round(calls * rates.completion_tokens)
        # Calls split over the models as recorded; evenly without a record (every judge on every row).
        shares = _history_shares(self.history.get(asset, []), models) or {m: 1 / len(models) for m in models}
        configs = [self.client.model_config(m) for m in models]
        cost = sum(shares[m] * c.cost(prompt, completion) for m, c in zip(models, configs, strict=True))
        width = self.client.concurrency_for(models)
        latency = rates.latency_s or (
            rates.completion_tokens / min(c.tokens_per_second for c in configs) + PRIOR_CALL_OVERHEAD_S
        )
        wall = math.ceil(calls / width) * latency if calls else 0.0
        source = "history" if rates.from_history else "priors"
        return AssetPlan(
            asset=asset,
            units=units,
            cached_units=cached,
            calls=calls,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            wall_s=round(wall, 2),
            models=models,
            basis=f"{basis}; per-call rates from {source}",
        )

    # ------------------------------------------------------------------ stages
    def seeds(self) -> tuple[list[SeedProblem], AssetPlan | None]:
        spec = self.spec
        materialized = self.wh.read_partition("seed_problems", spec.domain)
        if spec.seed_source is not None:
            n = spec.seed_source.sample_size
            if materialized is not None:
                seeds = [SeedProblem(**r) for r in materialized.to_pylist()]
                fresh = 0  # the same chunks, sampled deterministically: their seeds are cached
            else:
                seeds = [
                    SeedProblem(seed_id=f"s{i}", problem=PLACEHOLDER_PROBLEM, source="corpus")
                    for i in range(n)
                ]
                fresh = n
                self.notes.append(
                    "corpus seeds are not generated yet: their items are estimated, not looked up"
                )
            prior = _Rates(
                calls_per_unit=1, prompt_tokens=400, completion_tokens=60, latency_s=0, from_history=False
            )
            rates = self._rates("seed_problems", "fresh", prior)
            line = self._line(
                "seed_problems",
                units=n,
                cached=n - fresh,
                fresh_units=fresh,
                rates=rates,
                models=self.client.generator_chain()[:1],
                basis="one call per sampled chunk",
            )
            return seeds, line
        if spec.seed_problems:
            seeds, _ = build_seed_problems(spec, None)
            # The stored seeds when they are the spec's: the matrix assigns seeds in stored order.
            stored = [SeedProblem(**r) for r in materialized.to_pylist()] if materialized is not None else []
            if {s.problem for s in stored} == {s.problem for s in seeds}:
                seeds = stored
            return seeds, self._classification_line(seeds)
        chain = self.client.generator_chain()
        # One request per combination of matrix conditions (first rounds; retries are not planned).
        requests = seed_requests(spec, chain[0], count=self.seed_count)
        hits = sum(r is not None for r in self.client.cached_replies(requests))
        cached = hits == len(requests)
        if cached and materialized is not None:
            seeds = [SeedProblem(**r) for r in materialized.to_pylist()]
        else:
            per = seeds_per_combination(spec, self.seed_count)
            seeds = [
                SeedProblem(
                    seed_id=f"s{i}_{k}",
                    problem=PLACEHOLDER_PROBLEM,
                    source="generated",
                    conditions_json=json.dumps(combo, sort_keys=True) if combo else None,
                )
                for i, combo in enumerate(spec.matrix.combinations())
                for k in range(per)
            ]
            self.notes.append("seed problems are not generated yet: items are estimated, not looked up")
        line = self._requests_line(
            "seed_problems",
            requests,
            hits,
            basis="one seed request per combination of matrix conditions, looked up in the cache",
        )
        return seeds, line

    def _classification_line(self, seeds: list[SeedProblem]) -> AssetPlan | None:
        """One cached call per listed seed that needs classifying (``seeds_to_classify``)."""
        to_classify = seeds_to_classify(self.spec, seeds)
        if not to_classify:
            return None
        chain = self.client.generator_chain()
        requests = [classify_request(self.spec, chain[0], s.problem) for s in to_classify]
        hits = sum(r is not None for r in self.client.cached_replies(requests))
        return self._requests_line(
            "seed_problems",
            requests,
            hits,
            basis="one classification call per untagged seed that names no condition value",
        )

    def matrix(
        self, seeds: list[SeedProblem], target_count: int | None
    ) -> tuple[list[MatrixCell], AssetPlan | None]:
        spec = self.spec
        base = build_matrix(
            spec,
            [(s.seed_id, s.problem) for s in seeds],
            target_count=target_count,
            asked=asked_conditions([s.model_dump() for s in seeds]),
        )
        cells = plan_technique_rows(spec, base, feedback_targets(self.wh, spec.domain))
        if not spec.techniques.enabled:
            return cells, None
        seed_text = {s.seed_id: s.problem for s in seeds}
        wanted = derivations(cells, seed_text)
        chain = self.client.generator_chain()
        requests = [derivation_request(spec, d, chain[0]) for d in wanted]
        replies = self.client.cached_replies(requests)
        problems: dict[str, str] = {}
        for d, reply in zip(wanted, replies, strict=True):
            derived = parse_derived(reply.text, d) if reply is not None else None
            # A derivation not made yet: its items get a stand-in problem (they cannot be cached).
            problems[d.key] = derived or f"{PLACEHOLDER_PROBLEM}|{d.key}"
        cells = attach_problems(cells, problems, seed_text)
        cached = sum(r is not None for r in replies)
        line = self._requests_line(
            "problem_matrix",
            requests,
            cached,
            basis="every derivation request looked up in the cache",
            completion_tokens=60,
        )
        return cells, line

    def generation(self, cells: list[MatrixCell], seeds: list[SeedProblem]) -> tuple[AssetPlan, int, int]:
        """The raw_generations line, the number of items and of fresh (uncached) items."""
        spec = self.spec
        chain = self.client.generator_chain()
        temperature = spec.hints.temperature
        max_tokens = max_tokens_for(spec)
        resumed = self._resumed()
        items: list[PlannedItem] = list(iter_plan_items(cells, seeds, spec.domain))
        pending = [i for i in items if i.example_id not in resumed]
        requests = [generation_request(spec, i, chain[0], temperature, max_tokens) for i in pending]
        cached = sum(r is not None for r in self.client.cached_replies(requests))
        fresh = len(pending) - cached
        sample = requests[:200]
        prior = _Rates(
            calls_per_unit=1,
            prompt_tokens=sum(_tokens_of(r) for r in sample) / max(1, len(sample)),
            completion_tokens=max_tokens / 2,
            latency_s=0,
            from_history=False,
        )
        line = self._line(
            "raw_generations",
            units=len(items),
            cached=len(items) - fresh,
            fresh_units=fresh,
            rates=self._rates("raw_generations", "fresh", prior),
            models=chain[:1],
            basis=f"{len(items)} item requests looked up in the cache ({len(resumed)} resumed from parts)",
        )
        return line, len(items), fresh

    def _resumed(self) -> set[str]:
        """Items the in-flight parts already hold (what a rerun skips, as ``generate_examples`` does)."""
        folder = self.wh.inflight_dir("raw_generations", self.spec.domain)
        if not folder.is_dir():
            return set()
        return {eid for eid, _ in finished_keys(InflightRows(folder, RAW_GENERATIONS))}

    def validation(self, items: int, fresh: int) -> AssetPlan:
        spec = self.spec
        judges = resolve_judges(spec, self.client)
        if not spec.validation.judges_run:
            # The calibration found the panel uninformative: no judge is called (resolve_thresholds).
            return AssetPlan(
                asset="validated_examples",
                units=items,
                cached_units=items - fresh,
                calls=0,
                prompt_tokens=0,
                completion_tokens=0,
                cost_usd=0.0,
                wall_s=0.0,
                models=[j.model for j in judges],
                basis="validator panel skipped (validation.panel off: the profile's calibration found it "
                "adds no agreement with labels); rules, on-topic, cross-field and duplicate gates only",
            )
        example = _expected_example(spec)
        messages = judge_messages(spec, PLACEHOLDER_PROBLEM, example)
        request = CompletionRequest(
            model=judges[0].model, messages=tuple(messages), max_tokens=JUDGE_MAX_TOKENS
        )
        prior = _Rates(
            calls_per_unit=len(judges),
            prompt_tokens=_tokens_of(request) + 60,
            completion_tokens=JUDGE_MAX_TOKENS / 2,
            latency_s=0,
            from_history=False,
        )
        rates = self._rates("validated_examples", "all", prior)
        basis = (
            f"{rates.calls_per_unit:.2f} judge calls per raw row as recorded (pre-judge rejections and "
            "early stops included)"
            if rates.from_history
            else f"every one of {len(judges)} judges on every row (no history yet)"
        )
        return self._line(
            "validated_examples",
            units=items,
            cached=items - fresh,
            fresh_units=fresh,
            rates=rates,
            models=[j.model for j in judges],
            basis=basis,
        )

    def program(self, items: int, fresh: int) -> AssetPlan:
        spec = self.spec
        program = spec.program_or_default()
        pass_rate = self._pass_rate()
        accepted = max(2, round(items * pass_rate))
        n_train = min(accepted - 1, max(1, round(accepted * program.train_fraction)))
        n_eval = min(program.eval_sample, accepted - n_train)
        n_train_used = min(program.train_sample, n_train)
        per_eval = {
            "labeled_few_shot": 1.0,
            # The teacher's pass over (part of) the train set, then the held-out predictions.
            "bootstrap_few_shot": 1.0 + min(n_train_used, 2 * program.max_demos + 2) / max(1, n_eval),
            # MIPROv2 "light": instruction proposals and minibatch trials; roughly ten train passes.
            "miprov2": 1.0 + 10.0 * n_train_used / max(1, n_eval),
        }[program.optimizer]
        if program.metric == "llm_judge":
            per_eval += len(resolve_judges(spec, self.client))
        prior = _Rates(
            calls_per_unit=per_eval, prompt_tokens=600, completion_tokens=120, latency_s=0, from_history=False
        )
        rates = self._rates("compiled_program", "all", prior)
        unchanged = fresh == 0 and self.wh.read_json(SCORE_FILE.format(domain=spec.domain)) is not None
        model = self.client.profile.roles.program
        return self._line(
            "compiled_program",
            units=n_eval,
            cached=n_eval if unchanged else 0,
            fresh_units=0 if unchanged else n_eval,
            rates=rates,
            models=[model],
            basis=f"{program.optimizer}, {n_eval} held-out examples at a {pass_rate:.0%} pass rate"
            + (" (nothing new upstream: cached)" if unchanged else ""),
        )

    def endpoint_checks(self, lines: list[AssetPlan]) -> AssetPlan | None:
        """One check request per endpoint the run will call that this state folder has not checked
        yet (the client checks an endpoint before its first call; more requests only if the server
        rejects the json_schema mode)."""
        used = list(dict.fromkeys(m for line in lines if line.calls > 0 for m in line.models))
        unchecked = [m for m in used if self.client.needs_check(m)]
        if not unchecked:
            return None
        rates = _Rates(
            calls_per_unit=1,
            prompt_tokens=PROBE_PROMPT_TOKENS,
            completion_tokens=PROBE_COMPLETION_TOKENS,
            latency_s=0,
            from_history=False,
        )
        return self._line(
            "endpoint_checks",
            units=len(unchecked),
            cached=0,
            fresh_units=len(unchecked),
            rates=rates,
            models=unchecked,
            basis=f"first calls from this state folder to {unchecked}: one check each (or run synth doctor)",
        )

    def _pass_rate(self) -> float:
        records = self.history.get("validated_examples", [])
        accepted = self.wh.partition_rows("validated_examples", self.spec.domain)
        raw = self.wh.partition_rows("raw_generations", self.spec.domain)
        if records and accepted is not None and raw:
            return max(0.01, accepted / raw)
        return PRIOR_PASS_RATE

    # ------------------------------------------------------------------ whole plan
    def plan(self, *, target_count: int | None = None) -> Plan:
        spec = self.spec
        count = target_count if target_count is not None else spec.target_count
        lines: list[AssetPlan] = []
        if spec.statistical:
            prior = _Rates(
                calls_per_unit=1, prompt_tokens=300, completion_tokens=80, latency_s=0, from_history=False
            )
            lines.append(
                self._line(
                    "statistical_data",
                    units=1,
                    cached=0,
                    fresh_units=1,
                    rates=self._rates("statistical_data", "fresh", prior),
                    models=self.client.generator_chain()[:1],
                    basis="one scenario-naming call",
                )
            )
        else:
            seeds, seed_line = self.seeds()
            cells, matrix_line = self.matrix(seeds, target_count)
            gen_line, items, fresh = self.generation(cells, seeds)
            lines += [line for line in (seed_line, matrix_line) if line is not None]
            lines += [gen_line, self.validation(items, fresh), self.program(items, fresh)]
        checks = self.endpoint_checks(lines)
        if checks is not None:
            lines.insert(0, checks)
        return Plan(
            domain=spec.domain,
            profile=self.client.profile.name,
            target_count=count,
            created_at=datetime.now(UTC).isoformat(),  # microseconds: compared with run records
            assets=lines,
            notes=self.notes,
        )


def plan_domain(
    spec: ResolvedSpec | DomainSpec,
    warehouse: Warehouse,
    client: LLMClient,
    *,
    target_count: int | None = None,
    seed_count: int = 5,
) -> Plan:
    """The forecast of one run of ``spec`` for its domain (see the module docstring). The run reads
    the spec as ``domain_schema`` stores it, so the plan does too: pass the :class:`ResolvedSpec`
    of the spec file (``validation.calibration.resolved_spec``); a bare ``DomainSpec`` (a library
    caller's, a test's) is resolved against the client's profile here."""
    if isinstance(spec, ResolvedSpec):
        stored = spec.stored
    else:
        stored = warehouse.as_stored(resolve_thresholds(spec, client.profile)[0])
    return Planner(stored, warehouse, client, seed_count=seed_count).plan(target_count=target_count)


def save_plan(warehouse: Warehouse, plan: Plan) -> None:
    """Keep the plan where the next run's assets find it (they record planned vs actual)."""
    warehouse.write_json(PLAN_FILE.format(domain=plan.domain), plan.model_dump(mode="json"))


def render_plan(plan: Plan) -> str:
    """The plan as a table: per asset its units, cached share, calls, tokens, dollars and time."""
    header = (
        f"{'asset':<20} {'units':>7} {'cached':>7} {'calls':>7} {'tokens':>10} {'dollars':>10} {'wall s':>8}"
    )
    lines = [f"plan for {plan.domain} (profile {plan.profile}, target_count {plan.target_count})", header]
    for a in plan.assets:
        lines.append(
            f"{a.asset:<20} {a.units:>7} {a.cached_units:>7} {a.calls:>7} {a.tokens:>10} "
            f"{a.cost_usd:>10.4f} {a.wall_s:>8.1f}"
        )
    lines.append(
        f"{'total':<20} {'':>7} {'':>7} {plan.calls:>7} {plan.tokens:>10} {plan.cost_usd:>10.4f} "
        f"{plan.wall_s:>8.1f}"
    )
    lines += [f"  {a.asset}: {a.basis}" for a in plan.assets]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
