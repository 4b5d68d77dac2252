"""Validation: rule checks (``rules``), the judge panel (``consensus``), exact and near duplicates
(``dedup``), diversity over embeddings (``diversity``), the asset checks' measures (``gates``),
the Great Expectations suite (``ge_suite``) and validation of outside rows (``external``).

Imports ``spec``, ``llm`` and ``generation``; not Dagster."""
