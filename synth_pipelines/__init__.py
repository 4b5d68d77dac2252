"""synth-pipelines: LLM training data manufactured as Dagster software-defined assets."""

__version__ = "0.1.0"
