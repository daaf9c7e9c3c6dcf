"""Executors: how a Prefect task gets a stage run.

``inline`` (the embedded default) runs the stage in the flow's own process, fanning
out over local (or attached) Ray. ``ray-job`` submits ``python -m stages NAME ...
--parent-run ... --upstream ...`` through the Ray Jobs API, streams the job's log into
the task's log and reads the result back from MLflow. Either way inputs come from the
upstream stage *runs* of the same pipeline run, by MLflow run id, never from aliases.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stages.core import names
from pipelines.config import PipelineConfig
from stages.core.contract import Stage, StageInput
from stages.core.lineage import upstream_inputs, wired
from stages.core.errors import StageError
from stages.core.manifest import read_manifest
from stages.core.paths import data_dir, lmforge_home, work_root
from stages.core.storage import S3_SETTINGS
from stages.core.runner import StageRun, Tracking, cache_key, execute_stage
from stages.core.tracking import Tracker
from stages.registry import get_stage


@dataclass
class InlineExecutor:
    config: PipelineConfig
    tracker: Tracker
    parent_run_id: str | None

    def inputs_for(self, stage: Stage, stage_runs: dict[str, str]) -> dict[str, StageInput]:
        return upstream_inputs(self.tracker, stage, stage_runs)

    def run(self, name: str, stage_runs: dict[str, str], reuse: bool = True) -> StageRun:
        stage = get_stage(name)
        output_dir = work_root() / (self.parent_run_id or "adhoc") / name
        return execute_stage(
            stage,
            self.config.stage_config(name),
            self.inputs_for(stage, stage_runs),
            Path(output_dir),
            seed=self.config.pipeline.seed,
            tracking=Tracking(self.tracker, parent_run_id=self.parent_run_id, reuse=reuse),
            ray_address=self.config.engines.ray.address,
            ray_num_cpus=self.config.engines.ray.num_cpus,
            pipeline_name=self.config.pipeline.name,
            storage=self.config.engines.storage,
        )

    def cached_run(self, name: str, stage_runs: dict[str, str]) -> tuple[str, str | None]:
        """(cache key, reusable run id or None) without running anything: for --dry-run."""
        stage = get_stage(name)
        config = self.config.stage_config(name)
        seed = self.config.pipeline.seed
        inputs = {**stage.config_inputs(config, seed), **self.inputs_for(stage, stage_runs)}
        key = cache_key(stage, config, seed, inputs)
        return key, self.tracker.find_cached(name, key)


@dataclass
class RayJobExecutor:
    """One Ray job per stage: the same entry point a person runs by hand, on the cluster."""

    config: PipelineConfig
    tracker: Tracker
    parent_run_id: str
    log: Callable[[str], None] = field(default=print)

    def entrypoint(self, name: str, stage_runs: dict[str, str], output: Path, submission_id: str,
                   reuse: bool = True) -> str:
        stage = get_stage(name)
        python = self.config.engines.ray_job.python or sys.executable
        args = [python, "-m", "stages", name, "--config", "pipeline.yaml", "--output", str(output),
                "--parent-run", self.parent_run_id, "--submission-id", submission_id]
        for choices in sorted({spec.partition(":")[0] for spec in wired(stage, stage_runs).values()}):
            up = next((u for u in choices.split("|") if u in stage_runs), None)  # "ppo|dpo": the path that ran
            if up is None:
                raise StageError(f"{name} needs stage '{' or '.join(choices.split('|'))}', which has not run in "
                                 f"this pipeline run")
            args += ["--upstream", f"{up}={stage_runs[up]}"]
        if not reuse:
            args.append("--no-cache")
        if self.config.engines.storage:
            args += ["--storage", self.config.engines.storage]
        return " ".join(shlex.quote(a) for a in args)

    def run(self, name: str, stage_runs: dict[str, str], reuse: bool = True) -> StageRun:
        from ray.job_submission import JobStatus, JobSubmissionClient

        engine = self.config.engines.ray_job
        job_dir = work_root() / self.parent_run_id / f"{name}-job"
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "pipeline.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        output = work_root() / self.parent_run_id / name
        env = {"MLFLOW_TRACKING_URI": self.tracker.tracking_uri, "LMFORGE_HOME": str(lmforge_home()),
               "LMFORGE_DATA_DIR": str(data_dir()), "PYTHONUNBUFFERED": "1",
               # object storage: the job reaches it as this process does (a cluster may set its own instead)
               **{k: v for k, v in os.environ.items() if k in S3_SETTINGS}}
        use_cluster_token()
        client = JobSubmissionClient(engine.address)
        started = time.time()
        submission_id = f"lmforge-{name}-{uuid.uuid4().hex[:10]}"
        submit = dict(
            entrypoint=self.entrypoint(name, stage_runs, output, submission_id, reuse),
            submission_id=submission_id,
            runtime_env=job_runtime_env(job_dir, env),
            metadata={names.TAG_STAGE: name, names.TAG_PIPELINE: self.parent_run_id},
        )
        deadline = time.time() + engine.submit_timeout_s
        while True:
            try:
                job_id = client.submit_job(**submit)
                break
            except RuntimeError as exc:  # a fresh head's job agent comes up a little after its dashboard
                if "No available agent" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(2)
        self.log(f"{name}: submitted Ray job {job_id} to {engine.address}")
        seen = 0
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        try:
            while True:
                status = client.get_job_status(job_id)
                logs = client.get_job_logs(job_id)
                for line in logs[seen:].splitlines():
                    if line.strip():
                        self.log(f"[{job_id}] {line}")
                seen = len(logs)
                if status in terminal:
                    break
                time.sleep(engine.poll_s)
        except BaseException:  # cancelled (or the driver failed): the job must not run on unwatched
            client.stop_job(job_id)
            self.log(f"{name}: stopped Ray job {job_id}")
            raise
        if status != JobStatus.SUCCEEDED:
            tail = "\n".join(logs.strip().splitlines()[-15:])
            raise StageError(f"{name}: Ray job {job_id} {status.value}:\n{tail}")
        result = self.job_result(name, job_id)
        root = self.tracker.artifacts_path(result["run_id"])
        return StageRun(name, root, read_manifest(root), run_id=result["run_id"],
                        cache_hit=bool(result["cache_hit"]), duration_s=time.time() - started)

    def job_result(self, name: str, job_id: str) -> dict:
        """The stage run the job produced or reused, as the job recorded it in MLflow (on the pipeline run,
        keyed by the job's submission id), not as its log says."""
        recorded = self.tracker.get_run(self.parent_run_id).data.tags.get(names.job_result_tag(name))
        result = json.loads(recorded) if recorded else {}
        if result.get("submission_id") != job_id or not result.get("run_id"):
            raise StageError(f"{name}: Ray job {job_id} succeeded but recorded no stage run in MLflow "
                             f"({names.job_result_tag(name)} on pipeline run {self.parent_run_id}: {recorded!r})")
        return result


def job_runtime_env(job_dir: Path, env: dict[str, str]) -> dict:
    """The job's working dir and environment, with the quiet-logs hook every lmforge Ray job carries (a driver
    inside a job cannot add it to ``ray.init`` itself)."""
    from stages.core.quiet import ray_runtime_env

    quiet = ray_runtime_env()
    return {"working_dir": str(job_dir), "env_vars": {**quiet["env_vars"], **env},
            "worker_process_setup_hook": quiet["worker_process_setup_hook"]}


def use_cluster_token() -> None:
    """Ray 2.60 clusters require a token by default; a Jobs client only sends the one on this
    machine (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) once token auth is switched on for it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token auth
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
