"""Dagster concurrency pools: every asset that calls a model shares one pool per provider, so a
backfill over many domains (many runs) never oversubscribes the models.

The pool is ``llm`` unless ``SYNTH_LLM_POOL`` names another (e.g. ``llm_openai`` when switching
provider). Its limit lives in the instance: ``dagster instance concurrency set llm 1`` (the
Makefile's ``.dagster_home/dagster.yaml`` sets ``pools.default_limit: 1`` for the embedded models).
"""

import os

import dagster as dg

LLM_POOL = os.environ.get("SYNTH_LLM_POOL", "llm")


def ensure_pool_limit(instance: dg.DagsterInstance, pool: str = LLM_POOL) -> bool:
    """Write the instance's default limit for ``pool`` into its storage unless the pool is known.

    Why: the daemon's queue reads the set of known pools *before* it initializes a new pool to the
    default limit, so on a fresh instance the first tick that sees several queued runs dequeues all
    of them, and the pool does not hold (dagster 1.13). Registering the pool with the partitions
    (``make partitions``, ``domain_spec_sensor``) closes that window. A limit set by hand
    (``dagster instance concurrency set``) is never touched. Returns whether it wrote one.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or pool in storage.get_concurrency_keys():
        return False
    if instance.global_op_concurrency_default_limit is None:
        return False  # no default to apply: the pool is unlimited until someone sets it
    return bool(storage.initialize_concurrency_limit_to_default(pool))
