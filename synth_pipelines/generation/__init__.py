"""Generation: seed problems (``seeds``), the problem matrix (``matrix``), the generation prompts
(``prompts``) and the generated examples with their journal (``examples``).

Imports ``spec`` and ``llm``; not Dagster."""
