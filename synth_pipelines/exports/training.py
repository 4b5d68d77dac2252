"""Training exports built from validated examples: SFT chat messages, DPO preference pairs, QA pairs,
GRPO-verifiable problems and retriever triplets with mined hard negatives, each written as Parquet +
JSONL with a dataset card beside it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Any, Literal

from pydantic import BaseModel

from synth_pipelines.exports.rendering import render
from synth_pipelines.spec.model import DomainSpec
from synth_pipelines.spec.text import normalize_text, stable_hash
from synth_pipelines.validation.gates import JUDGED_STAGES
from synth_pipelines.warehouse.storage import StoragePath, Warehouse, atomic_write_parquet, atomic_write_text

ExportFormat = Literal["sft", "dpo", "qa", "grpo-verifiable", "retrieval"]
FORMATS: tuple[ExportFormat, ...] = ("sft", "dpo", "qa", "grpo-verifiable", "retrieval")
TEST_FRACTION = 0.1


def split_for(example_id: str) -> str:
    """Deterministic train/test split by id hash (stable across reruns)."""
    return "test" if int(stable_hash(example_id, length=8), 16) % 1000 < TEST_FRACTION * 1000 else "train"


def _program_pairs(
    spec: DomainSpec, validated: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], str, str]]:
    """(row, rendered inputs, rendered outputs) for every validated example."""
    program = spec.program_or_default()
    pairs = []
    for row in validated:
        ex = json.loads(row["example_json"])
        pairs.append((row, render(ex, program.inputs), render(ex, program.outputs)))
    return pairs


def _base(spec: DomainSpec, row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["example_id"], "domain": spec.domain, "split": split_for(row["example_id"])}


def tool_use_messages(spec: DomainSpec, example: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool-use trace in the OpenAI chat format: the request, the assistant's ``tool_calls``, one
    ``tool`` message per call with its real result, then the answer."""
    calls = example.get("tool_calls") or []
    return [
        {"role": "system", "content": spec.description.strip()},
        {"role": "user", "content": example["request"]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{k}",
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for k, c in enumerate(calls, start=1)
            ],
        },
        *(
            {"role": "tool", "tool_call_id": f"call_{k}", "content": c["result"]}
            for k, c in enumerate(calls, start=1)
        ),
        {"role": "assistant", "content": example["answer"]},
    ]


def openai_tools(spec: DomainSpec) -> list[dict[str, Any]]:
    """The ``tools`` a tool-use export's rows declare (the OpenAI function-calling format)."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in spec.tools
    ]


def sft_rows(spec: DomainSpec, validated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if spec.type == "tool-use":
        tools = openai_tools(spec)
        return [
            {
                **_base(spec, row),
                "messages": tool_use_messages(spec, json.loads(row["example_json"])),
                "tools": tools,
                "consensus": row.get("consensus"),
            }
            for row in validated
        ]
    return [
        {
            **_base(spec, row),
            "messages": [
                {"role": "system", "content": spec.description.strip()},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ],
            "consensus": row.get("consensus"),
        }
        for row, prompt, answer in _program_pairs(spec, validated)
    ]


def qa_rows(spec: DomainSpec, validated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**_base(spec, row), "question": prompt, "answer": answer, "consensus": row.get("consensus")}
        for row, prompt, answer in _program_pairs(spec, validated)
    ]


def generation_prompt(row: dict[str, Any]) -> str:
    conditions = json.loads(row.get("conditions_json") or "{}")
    cond = ", ".join(f"{k}={v}" for k, v in sorted(conditions.items())) or "none"
    return f"{row['problem']}\nConditions: {cond}\nComplexity: {row['complexity']}"


def dpo_rows(
    spec: DomainSpec, validated: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference pairs for the generation task: candidates of one prompt (a matrix cell's problem),
    ranked by validator consensus; chosen = best, rejected = worst. Degenerate pairs are skipped:
    identical texts, both below the consensus threshold, or equal scores. Rows accepted unjudged
    (the spec's panel was skipped) have no score to rank by and are counted as ``unjudged``."""
    threshold = spec.validation.threshold
    candidates = [r for r in validated if r.get("consensus") is not None] + [
        r for r in rejected if r.get("consensus") is not None and r.get("fail_stage") in JUDGED_STAGES
    ]
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for r in candidates:
        by_prompt.setdefault(generation_prompt(r), []).append(r)
    out: list[dict[str, Any]] = []
    skipped = {
        "single_candidate": 0,
        "identical": 0,
        "both_below_threshold": 0,
        "tied": 0,
        "unjudged": sum(1 for r in validated if r.get("consensus") is None),
    }
    for prompt, group in sorted(by_prompt.items()):
        if len(group) < 2:
            skipped["single_candidate"] += 1
            continue
        ranked = sorted(group, key=lambda r: (-(r["consensus"] or 0.0), r["example_id"]))
        best, worst = ranked[0], ranked[-1]
        if normalize_text(best["example_json"]) == normalize_text(worst["example_json"]):
            skipped["identical"] += 1
            continue
        if (best["consensus"] or 0.0) < threshold:
            skipped["both_below_threshold"] += 1
            continue
        if best["consensus"] == worst["consensus"]:
            skipped["tied"] += 1
            continue
        out.append(
            {
                "id": f"{best['example_id']}__{worst['example_id']}",
                "domain": spec.domain,
                "split": split_for(best["example_id"]),
                "prompt": prompt,
                "chosen": render(json.loads(best["example_json"]), list(spec.fields)),
                "rejected": render(json.loads(worst["example_json"]), list(spec.fields)),
                "chosen_consensus": best["consensus"],
                "rejected_consensus": worst["consensus"],
                "candidates": len(group),
            }
        )
    return out, skipped


# ---------------------------------------------------------------------------------------------- GRPO

_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 64
MAX_POWERS = 3
VERIFIER_MEMORY_MB = 256


def check_expression(expression: str) -> str | None:
    """Why ``expression`` may not be evaluated, or None: only numbers, + - * / // % and ** with a
    constant exponent of at most 64 (at most three of them), so no expression can run code or take
    unbounded time or memory. Checked here, before anything reaches the verifier process."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return f"longer than {MAX_EXPRESSION_CHARS} characters"
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return "not an arithmetic expression"
    powers = 0
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return f"{type(node).__name__} is not arithmetic"
        if isinstance(node, ast.Constant) and (
            isinstance(node.value, bool) or not isinstance(node.value, int | float)
        ):
            return f"{node.value!r} is not a number"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            powers += 1
            exponent = _number(node.right)
            if exponent is None:
                return "an exponent must be a number, not an expression"
            if abs(exponent) > MAX_EXPONENT:
                return f"exponent {exponent:g} is larger than {MAX_EXPONENT}"
    if powers > MAX_POWERS:
        return f"more than {MAX_POWERS} powers"
    return None


def _number(node: ast.expr) -> float | None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _number(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    return None


# The child limits itself before reading anything (CPU, address space, no file writes), evaluates
# one expression at a time under its own timer, and prints each result as a line as soon as it has
# it, so that a crash loses nothing already done. Its environment is empty: no key can leak into it.
_VERIFIER = r"""
import ast, json, resource, signal, sys
timeout, cpu_s, memory = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
           ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd)
def expired(signum, frame):
    raise TimeoutError(f"took longer than {timeout:g}s")
signal.signal(signal.SIGALRM, expired)
for expr in json.loads(sys.stdin.read()):
    try:
        tree = ast.parse(expr, mode="eval")
        if not all(isinstance(n, ALLOWED) for n in ast.walk(tree)):
            raise ValueError("only arithmetic is allowed")
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            value = float(eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}}, {}))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result = {"value": value}
    except BaseException as e:
        result = {"error": type(e).__name__ + ": " + str(e)[:80]}
    sys.stdout.write(json.dumps(result) + chr(10))
    sys.stdout.flush()
"""


def evaluate_expressions(expressions: list[str], *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Evaluate arithmetic expressions: checked by :func:`check_expression` here, then run in an
    isolated, resource-limited subprocess (``python -I``, empty environment) with ``timeout_s`` per
    expression. Returns ``{"value": float}`` or ``{"error": reason}`` for each, in order.

    If the child dies (a limit, a crash), the results it printed are kept, the expression it was on
    is reported as the culprit, and a new child takes the rest.
    """
    results: list[dict[str, Any] | None] = [None] * len(expressions)
    for i, expression in enumerate(expressions):
        reason = check_expression(expression)
        if reason is not None:
            results[i] = {"error": f"rejected: {reason}"}
    pending = [i for i, r in enumerate(results) if r is None]
    while pending:
        done = _run_verifier([expressions[i] for i in pending], timeout_s)
        for i, result in zip(pending, done, strict=False):
            results[i] = result
        if len(done) < len(pending):
            culprit = pending[len(done)]
            results[culprit] = {
                "error": f"the verifier stopped on this expression (limit or timeout of {timeout_s:g}s)"
            }
            pending = pending[len(done) + 1 :]
        else:
            pending = []
    return [r if r is not None else {"error": "not evaluated"} for r in results]


def _run_verifier(expressions: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """The results the child printed before it finished or was stopped (fewer on a crash)."""
    cpu_s = int(timeout_s * len(expressions)) + 2
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _VERIFIER, str(timeout_s), str(cpu_s), str(VERIFIER_MEMORY_MB << 20)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={},
    )
    try:
        out, _ = proc.communicate(json.dumps(expressions), timeout=timeout_s * len(expressions) + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    results = []
    for line in out.splitlines():
        try:
            results.append(dict(json.loads(line)))
        except ValueError:
            break  # a torn last line from a killed child
    return results


def grpo_rows(
    spec: DomainSpec, validated: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Problems whose answer a program checks: the example's ``expression_field`` must evaluate to its
    ``answer_field``. Verified rows are exported; the counts say what was dropped and why."""
    cfg = spec.verification
    if cfg is None:
        return [], {"no_verification_config": len(validated)}
    examples = [json.loads(r["example_json"]) for r in validated]
    results = evaluate_expressions(
        [str(e.get(cfg.expression_field, "")) for e in examples], timeout_s=cfg.timeout_s
    )
    program = spec.program_or_default()
    out: list[dict[str, Any]] = []
    dropped = {"wrong_answer": 0, "not_evaluable": 0}
    for row, ex, res in zip(validated, examples, results, strict=True):
        if "error" in res:
            dropped["not_evaluable"] += 1
            continue
        try:
            claimed = float(ex.get(cfg.answer_field))
        except (TypeError, ValueError):
            dropped["not_evaluable"] += 1
            continue
        if abs(res["value"] - claimed) > cfg.tolerance * max(1.0, abs(claimed)):
            dropped["wrong_answer"] += 1
            continue
        out.append(
            {
                "id": row["example_id"],
                "domain": spec.domain,
                "split": split_for(row["example_id"]),
                "prompt": render(ex, program.inputs),
                "answer": str(ex.get(cfg.answer_field)),
                "verifier": "arithmetic",
                "expression": str(ex.get(cfg.expression_field)),
            }
        )
    return out, dropped


# ---------------------------------------------------------------------------------------------- write


class ExportResult(BaseModel):
    format: str
    rows: int
    parquet: str
    jsonl: str
    card: str
    splits: dict[str, int]
    skipped: dict[str, int] = {}
    preview: list[dict[str, Any]] = []


def write_export(
    rows: list[dict[str, Any]],
    out_dir: StoragePath,
    name: str,
    card: str,
    fmt: str,
    skipped: dict[str, int] | None = None,
) -> ExportResult:
    """Write ``<name>.parquet``, ``<name>.jsonl`` and ``README.md`` (the dataset card) atomically."""
    import pyarrow as pa

    parquet, jsonl = out_dir / f"{name}.parquet", out_dir / f"{name}.jsonl"
    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
    atomic_write_parquet(parquet, table)
    atomic_write_text(jsonl, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    atomic_write_text(out_dir / "README.md", card)
    splits: dict[str, int] = {}
    for r in rows:
        splits[r.get("split", "train")] = splits.get(r.get("split", "train"), 0) + 1
    return ExportResult(
        format=fmt,
        rows=len(rows),
        parquet=str(parquet),
        jsonl=str(jsonl),
        card=str(out_dir / "README.md"),
        splits=splits,
        skipped=skipped or {},
        preview=rows[:3],
    )


def export_rows(
    warehouse: Warehouse, spec: DomainSpec, fmt: ExportFormat
) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, list[dict[str, Any]]]]:
    """One format's rows for one domain (and what was skipped, and the source tables by asset).

    Raises ValueError when the domain has no validated examples."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not exportable; choose one of {', '.join(FORMATS)}")
    if spec.statistical:
        raise ValueError(
            f"domain {spec.domain!r} is a {spec.type} domain: it has no training examples to export; "
            f"read its Parquet, statistical_data/domain={spec.domain}/part-0.parquet"
        )

    def rows_of(asset: str) -> list[dict[str, Any]]:
        table = warehouse.read_partition(asset, spec.domain)
        return table.to_pylist() if table is not None else []

    validated, rejected = rows_of("validated_examples"), rows_of("rejected_examples")
    if not validated:
        raise ValueError(
            f"domain {spec.domain!r} has no validated examples in {warehouse.root}; "
            "materialize validated_examples first (e.g. `synth generate --domain ...`)"
        )
    skipped: dict[str, int] = {}
    if fmt == "sft":
        rows = sft_rows(spec, validated)
    elif fmt == "qa":
        rows = qa_rows(spec, validated)
    elif fmt == "dpo":
        rows, skipped = dpo_rows(spec, validated, rejected)
    elif fmt == "retrieval":
        rows, skipped = _retrieval(warehouse, spec, validated)
    else:
        rows, skipped = grpo_rows(spec, validated)
    return rows, skipped, {"validated_examples": validated, "rejected_examples": rejected}


def _retrieval(
    warehouse: Warehouse, spec: DomainSpec, validated: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Retriever triplets: hard negatives mined from the domain's example embeddings."""
    import numpy as np

    from synth_pipelines.exports.retrieval import retrieval_rows
    from synth_pipelines.llm.embeddings import embed_texts

    table = warehouse.read_partition("example_embeddings", spec.domain, columns=["example_id", "embedding"])
    if table is None or not table.num_rows:
        raise ValueError(
            f"domain {spec.domain!r} has no example_embeddings in {warehouse.root}: the retrieval export "
            "mines its negatives there; materialize example_embeddings first"
        )
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    embeddings = dict(zip(table.column("example_id").to_pylist(), vectors, strict=True))
    return retrieval_rows(
        spec,
        validated,
        embeddings,
        lambda texts: embed_texts(texts, cache_path=warehouse.embedding_cache_path),
    )


def _card(
    warehouse: Warehouse,
    spec: DomainSpec,
    fmt: str,
    rows: list[dict[str, Any]],
    skipped: dict[str, int],
    sources: dict[str, list[dict[str, Any]]],
    run_ids: list[str],
) -> tuple[str, str]:
    """The export's file name stem and its dataset card."""
    from synth_pipelines.exports.cards import dataset_card

    raw_table = warehouse.read_partition("raw_generations", spec.domain)
    name = f"{spec.domain}_{fmt.replace('-', '_')}"
    splits: dict[str, int] = {}
    for r in rows:  # retrieval rows carry only their text columns: all of them train
        splits[r.get("split", "train")] = splits.get(r.get("split", "train"), 0) + 1
    card = dataset_card(
        spec,
        fmt,
        rows=len(rows),
        splits=splits,
        name=name,
        raw=raw_table.to_pylist() if raw_table is not None else [],
        validated=sources["validated_examples"],
        rejected=sources["rejected_examples"],
        diversity=warehouse.diversity_stats(spec.domain),
        skipped=skipped,
        run_ids=run_ids,
    )
    return name, card


def dataset_card_text(warehouse: Warehouse, spec: DomainSpec, fmt: ExportFormat | None = None) -> str:
    """The dataset card an export in ``fmt`` (default: the spec's training format) carries."""
    chosen = fmt or (spec.training_format if spec.training_format in FORMATS else "sft")
    rows, skipped, sources = export_rows(warehouse, spec, chosen)  # type: ignore[arg-type]
    return _card(warehouse, spec, chosen, rows, skipped, sources, [])[1]


def build_export(
    warehouse: Warehouse,
    spec: DomainSpec,
    fmt: ExportFormat,
    out_dir: StoragePath,
    *,
    run_ids: list[str] | None = None,
) -> ExportResult:
    """Build one format for one domain from the warehouse and write it with its dataset card."""
    rows, skipped, sources = export_rows(warehouse, spec, fmt)
    name, card = _card(warehouse, spec, fmt, rows, skipped, sources, run_ids or [])
    return write_export(rows, out_dir, name, card, fmt, skipped)
