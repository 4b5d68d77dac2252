"""The domain-partitioned assets, in dependency order."""

from synth_pipelines.assets.domain import corpus_chunks, domain_schema, problem_matrix, seed_problems
from synth_pipelines.assets.downstream import compiled_program, example_embeddings
from synth_pipelines.assets.examples import raw_generations, validated_examples
from synth_pipelines.assets.search import example_index

PIPELINE_ASSETS = [
    domain_schema,
    corpus_chunks,
    seed_problems,
    problem_matrix,
    raw_generations,
    validated_examples,
    example_embeddings,
    example_index,
    compiled_program,
]

# Asset names in dependency order (what progress displays and summaries walk).
PIPELINE_STEPS = [a.key.to_user_string() for a in PIPELINE_ASSETS]

__all__ = ["PIPELINE_ASSETS", *[a.key.path[-1] for a in PIPELINE_ASSETS]]
