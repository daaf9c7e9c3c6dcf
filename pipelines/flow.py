"""The lmforge Prefect flow: one task per stage, in DAG order, each run through an executor.

The flow owns the MLflow parent run (tagged with the Prefect flow-run id); each task
returns its stage's MLflow run id, which downstream tasks read their inputs from.
Stage reuse is decided by the MLflow cache key alone, so Prefect's task cache is off.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines.config import PipelineConfig, from_dict
from pipelines.executors import InlineExecutor, RayJobExecutor
from pipelines.dag import stages_to_run
from stages.core.errors import LmforgeError, StageError
from stages.core.tracking import Tracker


class PipelineFailed(LmforgeError):
    """A stage failed; carries the summary of what did run."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(name: str, config: dict[str, Any], stage_runs: dict[str, str], parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    cfg = from_dict(config)
    tracker = Tracker(cfg.pipeline.name, cfg.engines.mlflow.tracking_uri)
    try:
        if cfg.engines.executor == "ray-job":
            result = RayJobExecutor(cfg, tracker, parent_run_id, log=logger.info).run(name, stage_runs)
        else:
            result = InlineExecutor(cfg, tracker, parent_run_id).run(name, stage_runs)
    except LmforgeError:
        raise
    except Exception as exc:  # surface the stage's own error, not a framework traceback
        raise StageError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    state = "reused run" if result.cache_hit else "finished run"
    logger.info("%s: %s %s in %.1f s; counts %s", name, state, result.run_id, result.duration_s, result.counts)
    return {
        "run_id": result.run_id,
        "cache_hit": result.cache_hit,
        "counts": result.counts,
        "metrics": result.manifest.get("metrics", {}),
        "duration_s": round(result.duration_s, 2),
    }


def _summary_markdown(cfg: PipelineConfig, tracker: Tracker, parent: str, results: dict[str, dict[str, Any]],
                      failed: str | None) -> str:
    lines = [
        f"# lmforge pipeline `{cfg.pipeline.name}`",
        "",
        f"MLflow parent run `{parent}` (experiment `{tracker.experiment_name}`, id {tracker.experiment_id}); "
        f"open it with `lmforge ui` at http://127.0.0.1:{cfg.engines.mlflow.ui_port}/#/experiments/"
        f"{tracker.experiment_id}/runs/{parent}",
        "",
        "| stage | MLflow run | cache hit | duration (s) | counts |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in results.items():
        counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items())
        lines.append(f"| {name} | `{info['run_id']}` | {'yes' if info['cache_hit'] else 'no'} | "
                     f"{info['duration_s']} | {counts} |")
    if failed:
        lines.append(f"| {failed} | - | - | - | **failed** |")
    return "\n".join(lines)


@flow(name="lmforge-pipeline", validate_parameters=False)
def pipeline_flow(config: dict[str, Any], until: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Run the pipeline's stages in DAG order (through ``until``), reusing cached stages."""
    logger = get_run_logger()
    cfg = from_dict(config)
    names = stages_to_run(until, cfg.pipeline.alignment)
    flow_run_id = str(flow_run.id)
    tracker = Tracker(cfg.pipeline.name, cfg.engines.mlflow.tracking_uri)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = tracker.start_run(
        f"{cfg.pipeline.name}-{stamp}",
        tags={
            "lmforge.kind": "pipeline",
            "lmforge.prefect_flow_run_id": flow_run_id,
            "lmforge.config_path": config_path or "",
            "lmforge.until": until or "",
            "lmforge.stages": ",".join(names),
        },
    )
    tracker.log_params(parent, cfg.model_dump(mode="json"))
    logger.info("pipeline run %s (MLflow experiment %s): %s", parent, tracker.experiment_name, " -> ".join(names))
    results: dict[str, dict[str, Any]] = {}
    stage_runs: dict[str, str] = {}
    started = time.time()
    failed: str | None = None
    error: BaseException | None = None
    for name in names:
        try:
            info = run_stage.with_options(
                name=name, task_run_name=name, retries=cfg.pipeline.retries,
                retry_delay_seconds=cfg.pipeline.retry_delay_s,
            )(name, config, dict(stage_runs), parent)
        except Exception as exc:  # noqa: BLE001 - recorded on the parent run, then re-raised
            failed, error = name, exc
            break
        results[name] = info
        stage_runs[name] = info["run_id"]
        tracker.log_metrics(parent, {f"{name}.{k}": v for k, v in info["counts"].items()})
        tracker.log_metrics(parent, {f"{name}.duration_s": info["duration_s"]})

    summary = {
        "pipeline_run_id": parent,
        "prefect_flow_run_id": flow_run_id,
        "stages": dict(stage_runs),
        "cache_hits": [n for n, info in results.items() if info["cache_hit"]],
    }
    tracker.set_tags(parent, {
        "lmforge.stage_runs": ",".join(f"{k}={v}" for k, v in stage_runs.items()),
        "lmforge.cache_hits": ",".join(summary["cache_hits"]),
    })
    tracker.log_metrics(parent, {"pipeline.duration_s": time.time() - started})
    create_markdown_artifact(
        key="lmforge-pipeline-summary",
        markdown=_summary_markdown(cfg, tracker, parent, results, failed),
        description=f"lmforge stages and MLflow runs of pipeline run {parent}",
    )
    if error is not None:
        message = f"stage {failed} failed: {error}"
        tracker.fail(parent, message)
        raise PipelineFailed(message, {**summary, "failed_stage": failed}) from error
    tracker.finish(parent)
    return summary
