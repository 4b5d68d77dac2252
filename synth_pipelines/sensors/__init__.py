"""Sensors: discover domain specs (and, later, react to agent performance)."""

from synth_pipelines.sensors.domain_spec import domain_spec_sensor, plan_spec_runs

__all__ = ["domain_spec_sensor", "plan_spec_runs"]
