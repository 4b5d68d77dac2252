"""Dagster concurrency pools: every asset that calls a model shares one pool per provider, so a
backfill over many domains (many runs) never oversubscribes the models.

The pool is ``llm`` unless ``SYNTH_LLM_POOL`` names another (e.g. ``llm_openai`` when switching
provider). Its limit lives in the instance: ``dagster instance concurrency set llm 1`` (the
Makefile's ``.dagster_home/dagster.yaml`` sets ``pools.default_limit: 1`` for the embedded models).
"""

import os

LLM_POOL = os.environ.get("SYNTH_LLM_POOL", "llm")
