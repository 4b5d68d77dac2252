"""The Celery app that ``synth_domain_celery`` steps run on: ``celery -A synth_pipelines.celery_worker
worker``. It is dagster-celery's own app and step task, bound to the broker the job submits to
(SYNTH_CELERY_BROKER), so the workers and the job cannot disagree about where the queue is.

Each worker needs what a step needs: this package, the specs (SYNTH_SCHEMAS), the same warehouse
(SYNTH_WAREHOUSE: a shared disk on one machine, object storage across machines), the same Dagster
instance storage (DAGSTER_HOME, a Postgres-backed one across machines) and, for one rate limit and
one response cache across machines, SYNTH_SHARED_STATE.
"""

from __future__ import annotations

from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from synth_pipelines.jobs import celery_broker_url

_broker = celery_broker_url()
app = make_app(CeleryExecutor.for_cli(broker=_broker, backend=_broker).app_args())
execute_plan = create_task(app)
