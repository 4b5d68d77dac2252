"""The Celery app that ``synth_domain_celery`` steps run on: ``celery -A synth_pipelines.celery_worker
worker``. It is dagster-celery's own app and step task, bound to the broker the job submits to
(SYNTH_CELERY_BROKER), so the workers and the job cannot disagree about where the queue is.

Each worker needs what a step needs: this package, the specs (SYNTH_SCHEMAS), the same warehouse
(SYNTH_WAREHOUSE: a shared disk on one machine, object storage across machines), the same Dagster
instance storage (DAGSTER_HOME, a Postgres-backed one across machines) and, for one rate limit and
one response cache across machines, SYNTH_SHARED_STATE.

A worker is long-lived, so it loads at start what steps would otherwise load on first use (the
assets, torch with the embedding model, DSPy): about 5 s of CPU that the first shard step on each
worker paid beside its model calls, and the program step once per worker. SYNTH_WORKER_WARM_UP=0
skips it (e.g. a worker that never embeds).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from celery.signals import worker_init
from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from synth_pipelines.jobs import celery_broker_url

_broker = celery_broker_url()
app = make_app(CeleryExecutor.for_cli(broker=_broker, backend=_broker).app_args())
execute_plan = create_task(app)

WARM_UP_ENV = "SYNTH_WORKER_WARM_UP"
_log = logging.getLogger(__name__)


def warm_up() -> str:
    """Import the step code and load the default embedding model into this process; what it did,
    as one log line."""
    started = time.perf_counter()
    # Every asset's module with its libraries, and DSPy with litellm (for compiled_program).
    for module in ("synth_pipelines.assets", "synth_pipelines.learning.program"):
        importlib.import_module(module)
    from synth_pipelines.resources import EmbedderResource

    EmbedderResource().embed(["warm-up"])  # torch and the bundled model, cached per process
    seconds = time.perf_counter() - started
    return f"synth worker warm-up: step code, embedding model and DSPy loaded in {seconds:.1f} s"


@worker_init.connect
def _warm_up_worker(**_: object) -> None:
    if os.environ.get(WARM_UP_ENV, "1") == "0":
        return
    try:
        _log.warning(warm_up())
    except Exception as e:  # a step that needs what failed here reports it properly
        _log.warning("synth worker warm-up skipped: %s: %s", type(e).__name__, e)
