"""The lmforge Prefect flow: one task per stage, in DAG order, each run through an executor.

The flow owns the MLflow parent run (tagged with the Prefect flow-run id); each task
returns its stage's MLflow run id, and a task is handed the run ids of the stages its
inputs declare, and only those: Prefect draws its edges from them, so the flow-run graph
is the DAG's. Stage reuse is decided by the MLflow cache key alone, so Prefect's task
cache is off.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from stages.core import names
from pipelines.config import PipelineConfig, from_dict, load_config
from pipelines.executors import InlineExecutor, RayJobExecutor
from pipelines.dag import stages_to_run, upstream_in_run
from pipelines.rerun import CONFIG_ARTIFACT, RunPlan, plan_rerun
from stages.core.errors import (CANCEL_REQUESTED, Cancelled, ConfigError, LmforgeError, StageError, cancel_requested,
                                 raise_if_cancel_requested)
from stages.core.tracking import Tracker, ui_link


class PipelineFailed(LmforgeError):
    """A stage failed; carries the summary of what did run."""

    def __init__(self, message: str, summary: dict[str, Any], exit_code: int = 1, cancelled: bool = False):
        super().__init__(message)
        self.summary = summary
        self.exit_code = exit_code
        self.cancelled = cancelled


CANCEL_SIGNAL = signal.SIGUSR1


def _cancel_on_signal() -> None:
    """``lmforge cancel`` sends SIGUSR1: it raises ``Cancelled`` in the running stage, so the stage's MLflow
    run ends KILLED, nothing half-written is kept and Ray is shut down in order. (SIGTERM stays Prefect's:
    a worker cancelling a deployment's flow run sends it, and Prefect's own handler marks the run.)"""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        if CANCEL_REQUESTED.is_set():
            return  # raised once: the cleanup that started runs undisturbed
        CANCEL_REQUESTED.set()
        raise Cancelled("cancelled (lmforge cancel)")

    CANCEL_REQUESTED.clear()
    signal.signal(CANCEL_SIGNAL, handler)


def _not_cancelled(task, task_run, state) -> bool:
    """Prefect retries a failed stage task, never a cancelled one."""
    return not cancel_requested(state.result(raise_on_failure=False))


@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(name: str, config: dict[str, Any], stage_runs: dict[str, str], parent_run_id: str,
              reuse: bool = True) -> dict[str, Any]:
    logger = get_run_logger()
    cfg = from_dict(config)
    tracker = Tracker(cfg.pipeline.name, cfg.engines.mlflow.tracking_uri)
    if not reuse:
        logger.info("%s: rerun asked for: not reusing a cached run", name)
    try:
        if cfg.engines.executor == "ray-job":
            result = RayJobExecutor(cfg, tracker, parent_run_id, log=logger.info).run(name, stage_runs, reuse)
        else:
            result = InlineExecutor(cfg, tracker, parent_run_id).run(name, stage_runs, reuse)
    except LmforgeError:
        raise
    except Exception as exc:  # surface the stage's own error, not a framework traceback
        raise StageError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    state = "reused run" if result.cache_hit else "finished run"
    logger.info("%s: %s %s in %.1f s; counts %s", name, state, result.run_id, result.duration_s, result.counts)
    # the stage's own time (its manifest's): for a reused stage, that of the run that computed it, not the lookup's
    duration = result.manifest.get("duration_s", result.duration_s)
    return {
        "run_id": result.run_id,
        "cache_hit": result.cache_hit,
        "counts": result.counts,
        "metrics": result.manifest.get("metrics", {}),
        "duration_s": round(duration, 3),
        "lookup_s": round(result.duration_s, 2),
    }


def _summary_markdown(cfg: PipelineConfig, tracker: Tracker, parent: str, results: dict[str, dict[str, Any]],
                      failed: str | None, plan: RunPlan) -> str:
    from pipelines.runs import is_key_figure

    base = f"http://127.0.0.1:{cfg.engines.mlflow.ui_port}"

    def ui(run_id: str) -> str:
        return ui_link(base, tracker.experiment_id, run_id)

    lines = [
        f"# lmforge pipeline `{cfg.pipeline.name}`",
        "",
        f"MLflow parent run [`{parent}`]({ui(parent)}) (experiment `{tracker.experiment_name}`; "
        "`lmforge ui` starts the MLflow UI)",
    ]
    lines.append(f"Dashboard: `lmforge dashboard --run {parent}`, then http://127.0.0.1:8050/?run={parent}")
    if plan.rerun_of:
        lines.append(f"Rerun of [`{plan.rerun_of}`]({ui(plan.rerun_of)}); forced: {', '.join(plan.force) or 'none'}")
    lines += ["", "| stage | MLflow run | cache hit | duration (s) | counts | key figures |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, info in results.items():
        counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items())
        figures = ", ".join(f"{k}={v:.4g}" for k, v in info["metrics"].items()
                            if isinstance(v, (int, float)) and is_key_figure(f"{name}.{k}"))
        lines.append(f"| {name} | [`{info['run_id'][:12]}`]({ui(info['run_id'])}) | "
                     f"{'yes' if info['cache_hit'] else 'no'} | {info['duration_s']}"
                     f"{' (when computed)' if info['cache_hit'] else ''} | {counts} | {figures} |")
    if failed:
        lines.append(f"| {failed} | - | - | - | **failed** | |")
    return "\n".join(lines)


def resolve_plan(config: dict[str, Any] | None, until: str | None, config_path: str | None,
                 overrides: list[str] | None, rerun_stage: str | None, rerun_from: str | None,
                 only: bool) -> RunPlan:
    """The flow's parameters -> what to run: a given config, a config file with overrides, or a rerun."""
    if rerun_from:
        from mlflow.tracking import MlflowClient

        from stages.core.tracking import default_tracking_uri

        return plan_rerun(MlflowClient(default_tracking_uri()), rerun_from, rerun_stage, only, overrides or [])
    if config is not None:
        return RunPlan(from_dict(config), until)
    return RunPlan(load_config(Path(config_path) if config_path else None, overrides or []), until)


def _roll_up(tracker: Tracker, parent: str, name: str, info: dict[str, Any]) -> None:
    """The stage's counts, figures and duration on the parent run as ``<stage>.<name>``, so MLflow's
    compare view and ``lmforge compare`` show whole pipelines side by side (reused stages included)."""
    figures = {**info["counts"], **info["metrics"], "duration_s": info["duration_s"], "reused": float(info["cache_hit"])}
    tracker.log_metrics(parent, {f"{name}.{k}": v for k, v in figures.items()})


def pipeline_run_name() -> str:
    """``<config>-<UTC stamp>`` (``rerun-<stage>-`` or ``resume-`` for reruns): the Prefect flow run and the MLflow
    pipeline run get this same name, so a user finds one from the other."""
    params = flow_run.parameters or {}
    if params.get("rerun_from"):
        prefix = f"rerun-{params['rerun_stage']}" if params.get("rerun_stage") else "resume"
    else:
        prefix = _config_name(params)
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _config_name(params: dict[str, Any]) -> str:
    config = params.get("config")
    if isinstance(config, dict):
        return str((config.get("pipeline") or {}).get("name") or "lmforge")
    from pipelines.config import DEFAULT_CONFIG

    path = Path(params.get("config_path") or DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        name = (data.get("pipeline") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    for item in params.get("overrides") or []:
        if str(item).startswith("pipeline.name="):
            name = str(item).split("=", 1)[1]
    return str(name or "lmforge")


@flow(name="lmforge-pipeline", flow_run_name=pipeline_run_name, validate_parameters=False)
def pipeline_flow(config: dict[str, Any] | None = None, until: str | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None, rerun_stage: str | None = None, rerun_from: str | None = None,
                  only: bool = False) -> dict[str, Any]:
    """Run the pipeline's stages in DAG order (through ``until``), reusing cached stages.

    ``config`` is the resolved config (what ``lmforge run`` passes); a deployment passes
    ``config_path`` and ``overrides`` instead. ``rerun_from`` (a pipeline run id) reruns
    ``rerun_stage`` and what follows it (only it with ``only``), or resumes that run when
    no stage is named.
    """
    logger = get_run_logger()
    _cancel_on_signal()
    plan = resolve_plan(config, until, config_path, overrides, rerun_stage, rerun_from, only)
    cfg = plan.config
    config = cfg.model_dump(mode="json")
    planned = plan.stages or stages_to_run(plan.until, cfg.pipeline.model_dump())
    flow_run_id = str(flow_run.id)
    tracker = Tracker(cfg.pipeline.name, cfg.engines.mlflow.tracking_uri)
    tags = {
        names.TAG_KIND: names.KIND_PIPELINE,
        names.TAG_PREFECT_FLOW_RUN: flow_run_id,
        names.TAG_CONFIG_PATH: config_path or "",
        names.TAG_UNTIL: plan.until or "",
        names.TAG_STAGES: ",".join(planned),
        names.TAG_PID: str(os.getpid()),
        names.TAG_HOST: socket.gethostname(),
        names.TAG_PREFECT_API: os.environ.get("PREFECT_API_URL", ""),
    }
    if plan.rerun_of:
        tags.update({names.TAG_RERUN_OF: plan.rerun_of, names.TAG_RERUN_STAGE: plan.rerun_stage or "",
                     names.TAG_FORCED: ",".join(plan.force)})
    parent = tracker.start_run(flow_run.name or pipeline_run_name(), tags=tags)
    tracker.log_params(parent, config)
    tracker.client.log_text(parent, yaml.safe_dump(config, sort_keys=False), CONFIG_ARTIFACT)
    what = f" (rerun of {plan.rerun_of}; forced: {', '.join(plan.force) or 'none'})" if plan.rerun_of else ""
    logger.info("pipeline run %s (MLflow experiment %s): %s%s", parent, tracker.experiment_name,
                " -> ".join(planned), what)
    results: dict[str, dict[str, Any]] = {}
    stage_runs: dict[str, str] = {}
    started = time.time()
    failed: str | None = None
    error: BaseException | None = None
    for name in planned:
        try:
            raise_if_cancel_requested()
            info = run_stage.with_options(
                name=name, task_run_name=name, retries=cfg.pipeline.retries,
                retry_delay_seconds=cfg.pipeline.retry_delay_s, retry_condition_fn=_not_cancelled,
            )(name, config, {up: stage_runs[up] for up in upstream_in_run(name, planned) if up in stage_runs}, parent,
              name not in plan.force)
            results[name] = info
            stage_runs[name] = info["run_id"]
            _roll_up(tracker, parent, name, info)
            tracker.set_tags(parent, {  # kept current, so `lmforge status` shows a running pipeline's progress
                names.TAG_STAGE_RUNS: ",".join(f"{k}={v}" for k, v in stage_runs.items()),
                names.TAG_CACHE_HITS: ",".join(n for n, i in results.items() if i["cache_hit"]),
            })
        except Exception as exc:  # noqa: BLE001 - recorded on the parent run, then re-raised
            # a cancel can land while a finished stage is rolled up: that stage did not fail
            failed, error = (name if name not in stage_runs else f"after {name}"), exc
            break

    summary = {
        "pipeline_run_id": parent,
        "prefect_flow_run_id": flow_run_id,
        "stages": dict(stage_runs),
        "cache_hits": [n for n, info in results.items() if info["cache_hit"]],
    }
    if plan.rerun_of:
        summary["rerun_of"] = plan.rerun_of
    try:
        tracker.log_metrics(parent, {"pipeline.duration_s": time.time() - started})
        create_markdown_artifact(
            key="lmforge-pipeline-summary",
            markdown=_summary_markdown(cfg, tracker, parent, results, failed, plan),
            description=f"lmforge stages and MLflow runs of pipeline run {parent}",
        )
        raise_if_cancel_requested()
    except Cancelled as exc:  # after the last stage: the run still ends as cancelled, not lost
        failed, error = failed or "summary", error or exc
    if error is not None:
        # the request decides: a cancel that landed inside Prefect or Ray can surface as another error
        cancelled = cancel_requested(error)
        message = f"stage {failed} {'was cancelled' if cancelled else 'failed'}: {error}"
        tracker.set_tags(parent, {names.TAG_FAILED_STAGE: failed})
        if cancelled:
            tracker.set_tags(parent, {names.TAG_ERROR: message})
            tracker.finish(parent, "KILLED")
        else:
            tracker.fail(parent, message)
        # a stage that refused its config (a LoRA target its model lacks) exits 2, like a config refused up front
        code = Cancelled.exit_code if cancelled else ConfigError.exit_code if isinstance(error, ConfigError) else 1
        raise PipelineFailed(message, {**summary, "failed_stage": failed}, code, cancelled=cancelled) from error
    try:
        tracker.finish(parent)
    except Cancelled:  # every stage had finished: the cancel came too late, the run is done
        tracker.finish(parent)
    return summary
