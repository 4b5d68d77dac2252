"""Sensors: discover domain specs; regenerate domains when agents' success drops."""

from synth_pipelines.sensors.agent_performance import agent_performance_sensor
from synth_pipelines.sensors.domain_spec import domain_spec_sensor, plan_spec_runs

__all__ = ["agent_performance_sensor", "domain_spec_sensor", "plan_spec_runs"]
