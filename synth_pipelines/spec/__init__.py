"""The domain spec: its pydantic model and loading (``model``), safe domain names (``names``),
the text and ids of examples (``text``), and the six type templates (``templates/``).

Imports nothing else of synth_pipelines, and not Dagster."""
