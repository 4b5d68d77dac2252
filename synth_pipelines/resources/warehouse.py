"""Where everything lives: the warehouse root, the local state folder and the folder of domain specs."""

import dagster as dg
from pydantic import Field

from synth_pipelines.warehouse.storage import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The storage root for Parquet, JSON stats, exports and compiled programs; the state folder for
    DuckDB, the response cache and in-flight journals; and the specs folder.

    ``root`` is a local folder (default ``./warehouse``, env ``SYNTH_WAREHOUSE``) or an fsspec URL
    such as ``s3://bucket/synth``. ``state_dir`` (env ``SYNTH_STATE_DIR``) must be a real filesystem;
    it defaults to the root when that is local and to ``./.synth_state`` otherwise. Object-store
    credentials come from the filesystem's usual environment (``AWS_ACCESS_KEY_ID``, ...), never
    from this config; ``storage_options`` is for non-secret settings such as ``endpoint_url``.
    """

    root: str = "warehouse"
    state_dir: str | None = None
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="fsspec options for a remote root (non-secret, e.g. endpoint_url)."
    )
    schemas_dir: str = "schemas"

    def get(self) -> Warehouse:
        return Warehouse(self.root, state_dir=self.state_dir, storage_options=self.storage_options or None)
