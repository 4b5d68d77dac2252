"""Learning: the DSPy program (``program``) and its LM adapter (``dspy_lm``), agent outcomes
(``outcomes``) and the feedback decision (``feedback``).

Imports ``spec``, ``llm``, ``warehouse``, ``generation`` and ``validation``; not Dagster."""
