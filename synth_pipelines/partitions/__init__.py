"""The ``domain`` dynamic partitions: one key per spec file in ``schemas/``."""

import dagster as dg

DOMAIN_PARTITIONS_NAME = "domain"

domain_partitions = dg.DynamicPartitionsDefinition(name=DOMAIN_PARTITIONS_NAME)

__all__ = ["DOMAIN_PARTITIONS_NAME", "domain_partitions"]
