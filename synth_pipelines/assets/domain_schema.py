"""The first asset of every domain: its spec, validated and resolved against the profile."""

import dagster as dg

from synth_pipelines.assets._common import PIPELINE_GROUP
from synth_pipelines.assets.spec_file import (
    CALIBRATION_ASSET,
    calibration_version,
    domain_review_calibration,
    domain_spec_file,
    latest_observed_version,
    spec_observation,
)
from synth_pipelines.llm.config import ProfileError
from synth_pipelines.partitions import domain_partitions
from synth_pipelines.resources import LLMResource, WarehouseResource
from synth_pipelines.spec.example_schema import example_json_schema
from synth_pipelines.spec.loading import spec_path_for
from synth_pipelines.spec.model import SpecError, spec_digest
from synth_pipelines.spec.names import UnsafeDomainError, validate_domain_name
from synth_pipelines.validation.calibration import read_review_calibration, resolved_spec
from synth_pipelines.warehouse.storage import SPEC_FILE
from synth_pipelines.warehouse.tables import (
    spec_table,
)


@dg.asset(
    partitions_def=domain_partitions,
    group_name=PIPELINE_GROUP,
    deps=[domain_spec_file, domain_review_calibration],
    kinds={"yaml", "json"},
)
def domain_schema(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, llm: LLMResource
) -> dg.MaterializeResult:
    """The parsed and validated domain spec (grain: one spec per domain).

    Reads ``schemas/<domain>.yaml``, validates it (rules' SQL included) and compiles its fields to
    the example model and JSON schema. ``consensus_threshold: auto`` becomes the calibrated
    threshold of the domain's own review labels (``synth calibrate --domain``, from 30 labels on)
    or of the provider profile's validator panel (the design's 0.75 for an uncalibrated panel), so
    every later asset reads a number; ``threshold_sources`` says which. Like every asset of the
    domain it depends on the spec file (``domain_spec_file``, data version = the file's SHA-256),
    so an edit marks the whole domain stale in the UI as soon as the file is observed. Its own data
    version is the file's hash plus the resolved thresholds. An invalid spec fails here, naming the
    file and field, and nothing downstream runs.
    """
    domain = context.partition_key
    wh = warehouse.get()
    try:
        validate_domain_name(domain, source="the partition key")
        path = spec_path_for(warehouse.schemas_dir, domain)
        profile = llm.load_profile()
        resolved = resolved_spec(path, profile, read_review_calibration(wh, domain))
    except (UnsafeDomainError, FileNotFoundError, SpecError, ProfileError) as e:
        raise dg.Failure(description=str(e)) from e
    loaded, spec, threshold_sources = resolved.loaded, resolved.spec, resolved.threshold_sources
    if latest_observed_version(context.instance, domain) != loaded.file_hash:
        # A run launched from elsewhere than this project's sensors and commands (which observe the
        # file first): record the version read, so the assets after this one are made "from" it.
        context.log_event(spec_observation(domain, loaded.file_hash))
    calibrated = calibration_version(wh, domain)
    if latest_observed_version(context.instance, domain, CALIBRATION_ASSET) != calibrated:
        context.log_event(spec_observation(domain, calibrated, CALIBRATION_ASSET))
    program = loaded.spec.program
    if program is not None and program.module is not None:
        try:
            module_file = program.module_file(warehouse.schemas_dir)
        except ValueError as e:
            raise dg.Failure(description=f"{path}: program.module: {e}") from e
        if not module_file.is_file():
            raise dg.Failure(
                description=f"{path}: program.module: {module_file} does not exist (the path is relative "
                "to the specs folder)"
            )
    schema = example_json_schema(spec)
    out = wh.write_json(
        SPEC_FILE.format(domain=domain),
        {
            "file": str(path),
            "file_hash": loaded.file_hash,
            "spec_digest": spec_digest(spec),
            "threshold_sources": threshold_sources,
            "spec": spec.model_dump(mode="json"),
            "example_json_schema": schema,
        },
    )
    wh.replace_domain_rows("domain_specs", domain, spec_table(spec, loaded.file_hash))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            f"{loaded.file_hash}:{spec.validation.threshold:g}:{spec.validation.min_diversity:g}"
        ),
        metadata={
            "spec_file": dg.MetadataValue.path(str(path)),
            "file_sha256": loaded.file_hash,
            "stored_at": dg.MetadataValue.path(str(out)),
            "name": spec.name,
            "version": spec.version_str,
            "type": spec.type,
            "fields": len(spec.fields),
            "matrix_dimensions": dg.MetadataValue.json(spec.matrix.dimensions),
            "complexity": dg.MetadataValue.json(spec.matrix.complexity),
            "target_count": spec.target_count,
            "consensus_threshold": spec.validation.threshold,
            "diversity_threshold": spec.validation.min_diversity,
            "threshold_sources": dg.MetadataValue.json(threshold_sources),
            "rules": len(spec.rules),
            "training_format": spec.training_format,
            "example_json_schema": dg.MetadataValue.json(schema),
        },
    )
