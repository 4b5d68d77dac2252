"""Judge prompt templates. Constants only: changing one changes every affected prompt hash (and so the
cache key). Short on purpose, like the generation prompts: the embedded judges have a 2k context.
"""

from __future__ import annotations

VALIDATE_SYSTEM = (
    "You are a strict reviewer of training data for the domain '{domain}'. "
    "First write a one-sentence reason, then rate the example on each criterion: "
    "1 = wrong or nonsense, 2 = poor, 3 = acceptable, 4 = good, 5 = excellent."
)

VALIDATE_USER = "Task: {description}\nProblem: {problem}\nExample:\n{example}\nCriteria: {criteria}."
