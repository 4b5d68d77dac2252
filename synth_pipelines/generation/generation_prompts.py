"""Generation prompt templates (seeds and examples). Constants only: changing one changes every
affected prompt hash (and so the cache key).

Prompts are short on purpose: the embedded models have 135M-270M parameters and a 2k context.
"""

from __future__ import annotations

SEED_SYSTEM = (
    "You write short, concrete problem statements for building training data. "
    "Each problem is one sentence a practitioner could actually face."
)

SEED_USER = "Domain: {domain}\nAbout: {description}\nWrite {n} different problems in this domain.{style}"

# One request per combination of matrix conditions: every generated seed fits the cells it is for.
CONDITIONED_SEED_USER = (
    "Domain: {domain}\nAbout: {description}\nConditions: {conditions}\n"
    "Write {n} different problems in this domain that fit these conditions.{style}"
)

GROUNDED_SEED_USER = (
    "Domain: {domain}\nAbout: {description}\nSource text:\n{text}\n"
    "Write one problem in this domain that a practitioner could face, grounded in the source text."
)

# Added to an example's prompt when its seed came from a corpus chunk.
GROUNDING_BLOCK = "Source excerpt (ground the example in it):\n{excerpt}\n"

GENERATE_SYSTEM = (
    "You create one training example for the domain '{domain}' ({spec_type}). "
    "{description} Reply with JSON only.{style}"
)

GENERATE_USER = (
    "Problem: {problem}\n"
    "Conditions: {conditions}\n"
    "Complexity: {complexity}\n"
    "Fields to fill:\n{field_guide}\n"
    "{example_block}"
    "Write the example for this problem."
)

EXAMPLE_BLOCK = "A good example looks like:\n{example}\n"

# Appended to the conditions line of an adversarial row's prompt.
ADVERSARIAL_NOTE = "This is an adversarial example: make it hard and still correct and well-posed"

# One call per listed seed that is neither tagged nor names a dimension value: which cells it fits.
CLASSIFY_SEED_USER = (
    "Domain: {domain}\nAbout: {description}\nProblem: {problem}\n"
    "For each condition below, list the values this problem fits (all of them if it fits any):\n{options}"
)
