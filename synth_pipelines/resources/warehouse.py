"""Where everything lives: the warehouse root and the folder of domain specs."""

import dagster as dg

from synth_pipelines.storage import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The storage root for Parquet, DuckDB, the response cache and compiled programs, plus the specs folder.

    ``root`` defaults to ``./warehouse`` and is overridden by ``SYNTH_WAREHOUSE`` where the
    Definitions are built. A path under it can be any local folder (object storage is issue-tracked
    separately).
    """

    root: str = "warehouse"
    schemas_dir: str = "schemas"

    def get(self) -> Warehouse:
        return Warehouse(self.root)
