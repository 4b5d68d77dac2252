"""The seven domain-partitioned assets, in dependency order."""

from synth_pipelines.assets.domain import domain_schema, problem_matrix, seed_problems
from synth_pipelines.assets.downstream import compiled_program, example_embeddings
from synth_pipelines.assets.examples import raw_generations, validated_examples

PIPELINE_ASSETS = [
    domain_schema,
    seed_problems,
    problem_matrix,
    raw_generations,
    validated_examples,
    example_embeddings,
    compiled_program,
]

# Asset names in dependency order (what progress displays and summaries walk).
PIPELINE_STEPS = [a.key.to_user_string() for a in PIPELINE_ASSETS]

__all__ = ["PIPELINE_ASSETS", *[a.key.path[-1] for a in PIPELINE_ASSETS]]
