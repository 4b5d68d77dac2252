"""The Kubernetes example is checked against dagster-k8s's schemas, and its profile loads."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml
from dagster._config import process_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor

from synth_pipelines.assets import PIPELINE_ASSETS
from synth_pipelines.llm.config import load_profile
from synth_pipelines.partitions import domain_partitions

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def test_k8s_run_config_is_valid_for_the_job() -> None:
    job = dg.define_asset_job(
        "synth_domain_k8s",
        selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
        partitions_def=domain_partitions,
        executor_def=k8s_job_executor,
    )
    defs = dg.Definitions(
        assets=PIPELINE_ASSETS,
        jobs=[job],
        resources={
            "warehouse": dg.ResourceDefinition.none_resource(),
            "llm": dg.ResourceDefinition.none_resource(),
            "embedder": dg.ResourceDefinition.none_resource(),
        },
    )
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())
    assert dg.validate_run_config(defs.resolve_job_def("synth_domain_k8s"), run_config)


def test_k8s_instance_config_matches_the_run_launcher_schema() -> None:
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    result = process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
    assert result.success, result.errors


def test_vllm_profile_loads() -> None:
    profile = load_profile(str(DEPLOY / "vllm-profile.yaml"))
    assert profile.models["qwen-7b"].base_url.startswith("http://vllm.")
    assert profile.roles.generator == ["qwen-7b", "llama-8b"]


def test_k8s_storage_is_object_storage_with_a_mounted_state_dir() -> None:
    """The ConfigMap's warehouse is a bucket URL that our storage layer accepts, and its state dir is a
    volume that every step pod mounts."""
    from synth_pipelines.warehouse.storage import Warehouse

    config_map = yaml.safe_load((DEPLOY / "synth-config.yaml").read_text())
    env = config_map["data"]
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())["execution"]["config"]
    assert config_map["metadata"]["name"] in run_config["env_config_maps"]
    assert env["SYNTH_WAREHOUSE"].startswith("s3://")
    mounts = [m["mount_path"] for m in run_config["step_k8s_config"]["container_config"]["volume_mounts"]]
    assert env["SYNTH_STATE_DIR"] in mounts
    wh = Warehouse(env["SYNTH_WAREHOUSE"], state_dir=env["SYNTH_STATE_DIR"])
    assert wh.is_remote and str(wh.partition_file("validated_examples", "d")).startswith("s3://synth-data/")
    assert str(wh.duckdb_path) == "/state/synth.duckdb"
