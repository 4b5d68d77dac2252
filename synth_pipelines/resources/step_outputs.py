"""Where the steps of a sharded asset hand each other their values."""

from __future__ import annotations

import dagster as dg

from synth_pipelines.resources.warehouse import WarehouseResource

STEP_OUTPUTS_FOLDER = "step_outputs"


class StepOutputsIOManager(dg.ConfigurableIOManagerFactory):
    """The values the steps of ``raw_generations`` and ``validated_examples`` pass along (shard
    plans, shard reports with usage and verdicts), pickled under the warehouse's state folder in
    ``step_outputs/<run id>/<step>/<output>``.

    Dagster's default puts them in the instance's local artifact storage, which is per machine even
    when the instance itself is a shared Postgres: a shard run by a Celery worker on one machine
    would be unreadable by the publishing step on another. The state folder is the one place every
    worker already shares (rows in flight, progress; see docs/scaling-out.md), so the values go
    there. The assets themselves write their data to the warehouse and pass no values."""

    warehouse: WarehouseResource

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        folder = self.warehouse.get().state_dir / STEP_OUTPUTS_FOLDER
        return dg.FilesystemIOManager(base_dir=str(folder)).create_io_manager(context)
