"""compiled_program: the DSPy program compiled on the validated examples and scored held out."""

import time

import dagster as dg

from synth_pipelines.assets._common import (
    PIPELINE_GROUP,
    histogram_markdown,
    load_materialized_spec,
    record_spend,
)
from synth_pipelines.assets.example_embeddings import example_embeddings, validated_rows
from synth_pipelines.assets.spec_file import domain_spec_file
from synth_pipelines.learning.outcomes import record_performance
from synth_pipelines.llm.backends import ProviderConfigError
from synth_pipelines.llm.client import BudgetExhausted
from synth_pipelines.llm.types import ProviderError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.resources.pools import LLM_POOL
from synth_pipelines.warehouse.storage import PROGRAM_FILE, SCORE_FILE


@dg.asset(
    partitions_def=domain_partitions,
    pool=LLM_POOL,
    group_name=PIPELINE_GROUP,
    deps=[example_embeddings, domain_spec_file],
    kinds={"dspy", "json"},
)
def compiled_program(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    llm: LLMResource,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """The domain's DSPy program (grain: one program per domain), compiled on a sample of the train
    split of the validated examples with the spec's optimizer, scored on a sample of the held-out
    split stratified by matrix cell (``program.eval_sample``, default 300) with the spec's metric,
    and saved as DSPy state JSON. The score and its 95% confidence interval are appended to the DuckDB
    table ``agent_performance`` (source ``compiled_program``) as the baseline agent success. A
    provider failure fails the asset; it never becomes a score."""
    # DSPy (and litellm under it) load here, not when the code location loads: other steps never pay.
    from synth_pipelines.learning.program import (
        example_rows,
        performance_row,
        program_threads,
        save_program,
        train_and_score,
    )
    from synth_pipelines.learning.train import TrainError, train_user_program

    started = time.monotonic()
    domain = context.partition_key
    wh = warehouse.get()
    spec = load_materialized_spec(wh, domain)
    program_spec = spec.program_or_default()
    rows = example_rows(validated_rows(wh, domain))
    client = llm.client(wh.cache_path)
    model = client.profile.roles.program
    threads = program_threads(client)
    embed = lambda texts: embedder.embed(texts, cache_path=wh.embedding_cache_path)  # noqa: E731
    program_source = "spec signature"
    try:
        if program_spec.module is not None:
            # The spec names the user's own dspy.Module (relative to the specs folder).
            try:
                program_file = program_spec.module_file(warehouse.schemas_dir)
            except ValueError as e:
                raise TrainError(str(e)) from e
            user, run = train_user_program(spec, rows, client, program_file, embed=embed, threads=threads)
            program_spec = program_spec.model_copy(update={"inputs": user.inputs, "outputs": user.outputs})
            program_source = f"{program_file} ({user.cls.__name__})"
        else:
            run = train_and_score(spec, rows, client, program_spec, embed=embed, threads=threads)
    except TrainError as e:
        raise dg.Failure(description=f"compiled_program for {domain!r}: program.module: {e}") from e
    except ValueError as e:  # fewer than 2 validated examples
        raise dg.Failure(
            description=f"compiled_program for {domain!r}: {e}. Raise target_count or "
            "check the rejection reasons on validated_examples."
        ) from e
    except (ProviderError, ProviderConfigError, BudgetExhausted) as e:
        raise dg.Failure(
            description=f"compiling or scoring the program for {domain!r}: {e}. No score was recorded "
            "(an outage is not a measurement); replies so far are cached, so a rerun resumes.",
        ) from e
    compiled, score = run.compiled, run.score
    low, high = score.ci_low, score.ci_high
    per_example = score.per_example
    path = save_program(compiled, wh.file(PROGRAM_FILE, domain))
    wh.write_json(SCORE_FILE.format(domain=domain), score.model_dump())
    record_performance(wh, performance_row(domain, "compiled_program", context.run_id, score))
    interval = (
        {"score_ci95_low": round(low, 4), "score_ci95_high": round(high, 4)}
        if low is not None and high is not None
        else {}
    )
    return dg.MaterializeResult(
        metadata={
            "score": dg.MetadataValue.float(round(score.score, 4)),
            **interval,
            "metric": score.metric,
            "optimizer": score.optimizer,
            "n_train": score.n_train,
            "n_heldout": score.n_heldout,
            "n_eval": score.n_eval,
            "eval_sample": dg.MetadataValue.text(
                f"{score.n_eval} of {score.n_heldout} held-out examples, stratified by matrix cell"
            ),
            "parse_failures": score.parse_failures,
            "demos": sum(len(p.demos) for _, p in compiled.named_predictors()),
            "program_source": program_source,
            "inputs": dg.MetadataValue.json(program_spec.inputs),
            "outputs": dg.MetadataValue.json(program_spec.outputs),
            "program_model": model,
            "program_threads": threads,
            "program_path": dg.MetadataValue.path(str(path)),
            "score_histogram": histogram_markdown(per_example),
            **record_spend(
                context, wh, client.totals, units=score.n_eval, started=started, concurrency=threads
            ),
        }
    )
