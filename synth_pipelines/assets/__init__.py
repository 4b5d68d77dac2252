"""The domain-partitioned assets, in dependency order."""

from synth_pipelines.assets import _quiet  # noqa: F401  (first: hides one Dagster preview warning)
from synth_pipelines.assets.compiled_program import compiled_program
from synth_pipelines.assets.domain_schema import domain_schema
from synth_pipelines.assets.example_embeddings import example_embeddings
from synth_pipelines.assets.example_index import example_index
from synth_pipelines.assets.problems import corpus_chunks, problem_matrix, seed_problems
from synth_pipelines.assets.raw_generations import raw_generations
from synth_pipelines.assets.validated_examples import validated_examples

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
