"""Executors: how a Prefect task gets a stage run.

``inline`` (the embedded default) runs the stage in the flow's own process, fanning
out over local (or attached) Ray. Inputs always come from the upstream stage *runs*
of the same pipeline run, by MLflow run id, never from registry aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PipelineConfig
from stages.core.contract import Stage, StageInput
from stages.core.digests import sha256_json
from stages.core.errors import StageError
from stages.core.manifest import read_manifest
from stages.core.paths import work_root
from stages.core.runner import StageRun, Tracking, cache_key, execute_stage
from stages.core.tracking import Tracker
from stages.registry import get_stage


def upstream_input(tracker: Tracker, name: str, spec: str, stage_runs: dict[str, str]) -> StageInput:
    """Resolve ``"upstream_stage:output"`` to the local output of that stage's run."""
    upstream, _, output = spec.partition(":")
    run_id = stage_runs.get(upstream)
    if run_id is None:
        raise StageError(f"input '{name}' needs stage '{upstream}', which has not run in this pipeline run")
    root = tracker.artifacts_path(run_id)
    manifest = read_manifest(root)
    rel = manifest["named_outputs"].get(output)
    if rel is None:
        raise StageError(f"run {run_id} of '{upstream}' has no output '{output}'")
    prefix = rel.rstrip("/")
    digests = {k: v for k, v in manifest["outputs"].items() if k == prefix or k.startswith(prefix + "/")}
    return StageInput(name=name, path=root / rel, digest=sha256_json(sorted(digests.items())), run_id=run_id)


@dataclass
class InlineExecutor:
    config: PipelineConfig
    tracker: Tracker
    parent_run_id: str | None

    def inputs_for(self, stage: Stage, stage_runs: dict[str, str]) -> dict[str, StageInput]:
        return {name: upstream_input(self.tracker, name, spec, stage_runs) for name, spec in stage.inputs.items()}

    def run(self, name: str, stage_runs: dict[str, str]) -> StageRun:
        stage = get_stage(name)
        output_dir = work_root() / (self.parent_run_id or "adhoc") / name
        return execute_stage(
            stage,
            self.config.stage_config(name),
            self.inputs_for(stage, stage_runs),
            Path(output_dir),
            seed=self.config.pipeline.seed,
            tracking=Tracking(self.tracker, parent_run_id=self.parent_run_id),
            ray_address=self.config.engines.ray.address,
            ray_num_cpus=self.config.engines.ray.num_cpus,
            pipeline_name=self.config.pipeline.name,
        )

    def cached_run(self, name: str, stage_runs: dict[str, str]) -> tuple[str, str | None]:
        """(cache key, reusable run id or None) without running anything: for --dry-run."""
        stage = get_stage(name)
        config = self.config.stage_config(name)
        seed = self.config.pipeline.seed
        inputs = {**stage.config_inputs(config, seed), **self.inputs_for(stage, stage_runs)}
        key = cache_key(stage, config, seed, inputs)
        return key, self.tracker.find_cached(name, key)
