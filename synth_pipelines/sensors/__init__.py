"""Sensors: observe spec files, discover and rerun changed domains, regenerate domains when agents'
success drops."""

from synth_pipelines.sensors.agent_performance import agent_performance_sensor
from synth_pipelines.sensors.domain_spec import (
    domain_spec_sensor,
    plan_spec_runs,
    spec_observation_sensor,
    spec_stale_assets,
)

__all__ = [
    "agent_performance_sensor",
    "domain_spec_sensor",
    "plan_spec_runs",
    "spec_observation_sensor",
    "spec_stale_assets",
]
