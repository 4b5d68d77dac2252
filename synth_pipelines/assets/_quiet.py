"""Hide the two Dagster warnings a user cannot act on, before any asset is declared.

Every entry point (`synth`, `make demo`, `dagster dev`, the REST and MCP service) imports the
``assets`` package, whose ``__init__`` imports this module first. Dagster flags each partitioned
asset check as a preview feature, once per check per load, and the spec file's observable source
asset as a beta feature: dozens of lines that hide the run's summary. Only these two messages are
filtered; every other warning still shows.
"""

import warnings

import dagster as dg

warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)
warnings.filterwarnings(
    "ignore", message="Function `observable_source_asset` is currently in beta", category=dg.BetaWarning
)
