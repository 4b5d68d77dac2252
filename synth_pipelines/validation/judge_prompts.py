"""Judge prompt templates. Constants only: changing one changes every affected prompt hash (and so the
cache key). Short on purpose, like the generation prompts: the embedded judges have a 2k context.

A judge sees what it must check: the spec's description and field guide (types, allowed values,
bounds, meanings), the problem and matrix conditions the example was written for (or, for a row
from outside the pipeline, a note that there are none), the example, and the criteria, one of which
is always cross-field ``consistency``.
"""

from __future__ import annotations

VALIDATE_SYSTEM = (
    "You are a strict reviewer of training data for the domain '{domain}'. "
    "First write a one-sentence reason, then rate the example on each criterion: "
    "1 = wrong or nonsense, 2 = poor, 3 = acceptable, 4 = good, 5 = excellent."
)

VALIDATE_USER = (
    "Task: {description}\n"
    "Fields:\n{field_guide}\n"
    "{problem_block}"
    "Example:\n{example}\n"
    "Criteria: {criteria}.\n"
    "{criteria_notes}"
)

PROBLEM_BLOCK = "Problem: {problem}\nConditions: {conditions}\n"

# A row from outside the pipeline carries no problem: it is judged against the task and the fields.
NO_PROBLEM_BLOCK = "Problem: none given; judge the example against the task and the field meanings.\n"

# Always scored next to the spec's criteria: the failure the rules cannot see (a fix that does not
# address the cause, a method that does not fit the task, an answer the reasoning does not reach).
CONSISTENCY_CRITERION = "consistency"

CRITERIA_NOTES = {
    CONSISTENCY_CRITERION: (
        "consistency: the fields agree with each other, with the problem and with the conditions "
        "(the method fits the task, the fix addresses the cause, the answer follows from the reasoning)."
    ),
}
