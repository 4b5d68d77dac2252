"""The provider layer: one path for every model call (see :mod:`synth_pipelines.llm.client`)."""
