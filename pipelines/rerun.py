"""Rerun one stage of an earlier pipeline run, or resume a failed one, from what that run
recorded in MLflow: its resolved config (an artifact of the parent run) and the stages it
covered. Upstream stages come back as cache hits (same config, same inputs, same cache
key); the rerun stage, and the stages downstream of it unless ``only``, run again even
when their key is cached, since a person asked for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from stages.core import names
from pipelines.config import PipelineConfig, from_dict
from stages.core.configuration import apply_overrides
from stages.core.errors import ConfigError

CONFIG_ARTIFACT = "pipeline_config.yaml"


@dataclass
class RunPlan:
    """What a pipeline run covers: its config, last stage, and the stages that run even if cached."""

    config: PipelineConfig
    until: str | None = None
    force: list[str] = field(default_factory=list)
    stages: list[str] | None = None  # exactly these (a rerun or resume covers what the earlier run covered)
    rerun_of: str | None = None
    rerun_stage: str | None = None


def pipeline_run(client, run_id: str):
    """The MLflow parent run of a pipeline run, or a clear error."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--from: no MLflow run {run_id!r} in {client.tracking_uri} "
                          "(`lmforge status` lists pipeline runs)") from None
    if run.data.tags.get(names.TAG_KIND) != names.KIND_PIPELINE:
        stage = run.data.tags.get(names.TAG_STAGE)
        hint = f" (it is a run of stage {stage}; its pipeline run is {run.data.tags.get('mlflow.parentRunId')})" \
            if stage else ""
        raise ConfigError(f"--from: run {run_id} is not a pipeline run{hint}")
    return run


def recorded_config(client, run) -> dict[str, Any]:
    import mlflow.artifacts

    try:
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri.rstrip('/')}/{CONFIG_ARTIFACT}")
    except Exception as exc:  # noqa: BLE001 - any store error means the same thing here
        raise ConfigError(f"pipeline run {run.info.run_id} has no {CONFIG_ARTIFACT} artifact to rerun from "
                          f"({type(exc).__name__})") from None
    return yaml.safe_load(text)


def plan_rerun(client, from_run: str, stage: str | None, only: bool, overrides: list[str]) -> RunPlan:
    """``stage`` None resumes: same config, every finished stage a cache hit, nothing forced."""
    run = pipeline_run(client, from_run)
    config = from_dict(apply_overrides(recorded_config(client, run), overrides))
    stages = [s for s in run.data.tags.get(names.TAG_STAGES, "").split(",") if s]
    if not stages:
        raise ConfigError(f"pipeline run {from_run} records no stages (tag {names.TAG_STAGES})")
    if stage is None:
        return RunPlan(config, until=stages[-1], stages=stages, rerun_of=from_run)
    if stage not in stages:
        raise ConfigError(f"rerun: stage '{stage}' is not a stage of pipeline run {from_run}; "
                          f"it ran {', '.join(stages)}")
    from pipelines.dag import downstream, stages_to_run

    if only:
        return RunPlan(config, until=stage, stages=stages_to_run(stage, config.pipeline.model_dump()), force=[stage],
                       rerun_of=from_run, rerun_stage=stage)
    return RunPlan(config, until=stages[-1], stages=stages, force=downstream(stage, stages), rerun_of=from_run,
                   rerun_stage=stage)
