"""Pipeline runs as MLflow recorded them: which exist, what state each stage is in, and
how two or more of them differ. Read-only; ``lmforge status`` and ``lmforge compare``
print it, ``lmforge cancel`` and ``lmforge gc`` act on it.
"""

from __future__ import annotations

import socket
from typing import Any

from stages.core import names
from stages.core.errors import ConfigError


def experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def recent_pipeline_runs(client, limit: int = 10) -> list:
    ids = experiment_ids(client)
    if not ids:
        return []
    return client.search_runs(ids, filter_string=f"tags.`{names.TAG_KIND}` = '{names.KIND_PIPELINE}'",
                              order_by=["attributes.start_time DESC"], max_results=limit)


def get_pipeline_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} in {client.tracking_uri} (`lmforge status` lists them)") from None
    if run.data.tags.get(names.TAG_KIND) != names.KIND_PIPELINE:
        raise ConfigError(f"run {run_id} is not a pipeline run (it is {run.data.tags.get(names.TAG_STAGE, 'untagged')})")
    return run


def _pairs(tag: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in tag.split(",") if "=" in item)


def process_alive(run) -> bool | None:
    """Whether the process that runs this pipeline is alive (None: it runs on another host)."""
    tags = run.data.tags
    if tags.get(names.TAG_HOST) != socket.gethostname() or not tags.get(names.TAG_PID):
        return None
    import psutil

    try:
        return psutil.Process(int(tags[names.TAG_PID])).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def pipeline_state(run) -> str:
    status = run.info.status
    if status == "RUNNING" and process_alive(run) is False:
        return "LOST"  # its process died without closing the run (killed -9, machine reboot)
    return {"KILLED": "CANCELLED"}.get(status, status)


def stage_states(client, run) -> list[dict[str, Any]]:
    """One row per planned stage: state (done, cached, running, failed, cancelled, pending, not run),
    its MLflow run and duration."""
    tags = run.data.tags
    planned = [s for s in tags.get(names.TAG_STAGES, "").split(",") if s]
    finished = _pairs(tags.get(names.TAG_STAGE_RUNS, ""))
    hits = set(filter(None, tags.get(names.TAG_CACHE_HITS, "").split(",")))
    children = {c.data.tags.get(names.TAG_STAGE): c for c in client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"], max_results=200)}
    pipeline = pipeline_state(run)
    rows = []
    for name in planned:
        child = children.get(name)
        duration = run.data.metrics.get(f"{name}.duration_s")
        started = ended = None
        if child is not None and name not in hits:
            started, ended = child.info.start_time, child.info.end_time
        if name in finished:
            state = "cached" if name in hits else "done"
            run_id = finished[name]
        elif child is not None:
            state = {"RUNNING": "running", "FAILED": "failed", "KILLED": "cancelled"}.get(child.info.status, "done")
            if state == "running" and pipeline in ("LOST", "CANCELLED", "FAILED"):
                state = "cancelled" if pipeline == "CANCELLED" else "lost"
            run_id = child.info.run_id
            if child.info.end_time:
                duration = (child.info.end_time - child.info.start_time) / 1000
        else:
            state = "pending" if pipeline == "RUNNING" else "not run"
            run_id = None
        rows.append({"stage": name, "state": state, "run_id": run_id, "duration_s": duration, "started": started,
                     "ended": ended})
    return rows


def describe(client, run) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "pipeline_run_id": run.info.run_id,
        "name": run.info.run_name,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "state": pipeline_state(run),
        "started": run.info.start_time,
        "duration_s": run.data.metrics.get("pipeline.duration_s"),
        "prefect_flow_run_id": tags.get(names.TAG_PREFECT_FLOW_RUN),
        "rerun_of": tags.get(names.TAG_RERUN_OF),
        "failed_stage": tags.get(names.TAG_FAILED_STAGE),
        "error": tags.get(names.TAG_ERROR),
        "stages": stage_states(client, run),
    }


# --- comparison -------------------------------------------------------------------------
# Which figures matter and which way is better is each stage's own declaration (``Stage.figures``);
# ``lmforge compare`` without ``--all`` shows the key ones.


def _declared(metric: str):
    """The declaration a rolled-up ``<stage>.<figure>`` falls under, or None (an unknown stage or figure)."""
    from stages.registry import stage_class

    stage, _, figure = metric.partition(".")
    try:
        cls = stage_class(stage)
    except ConfigError:  # a stage that is no longer installed: its figures still show with --all
        return None
    return cls.figure(figure)


def is_key_figure(metric: str) -> bool:
    declared = _declared(metric)
    return bool(declared and declared.key)


def direction(metric: str) -> str | None:
    """'min' or 'max' where a smaller or larger value is better; None for counts and settings."""
    declared = _declared(metric)
    return {"lower": "min", "higher": "max"}.get(declared.better) if declared else None


def reused_stages(client, run) -> dict[str, float | None]:
    """{stage: the reused run's own duration} of a pipeline run's cache hits: a reused stage took no time in
    this run, and its lookup time is not a figure to compare with a stage that computed."""
    tags = run.data.tags
    hits = [s for s in tags.get(names.TAG_CACHE_HITS, "").split(",") if s]
    stage_runs = _pairs(tags.get(names.TAG_STAGE_RUNS, ""))
    own = {}
    for stage in hits:
        try:
            own[stage] = client.get_run(stage_runs[stage]).data.metrics.get("duration_s")
        except Exception:  # noqa: BLE001 - the reused run was deleted (gc): its duration is unknown
            own[stage] = None
    return own


def compare(client, run_ids: list[str], everything: bool = False) -> dict[str, Any]:
    if len(run_ids) < 2:
        raise ConfigError("compare needs at least two pipeline runs")
    runs = [get_pipeline_run(client, r) for r in run_ids]
    reused = [reused_stages(client, r) for r in runs]
    figures = sorted(set().union(*(r.data.metrics for r in runs)))
    if not everything:
        figures = [n for n in figures if is_key_figure(n)]
    rows = []
    for name in figures:
        values = [r.data.metrics.get(name) for r in runs]
        stage, _, leaf = name.partition(".")
        marks = [stage in hits for hits in reused]
        if leaf == "duration_s":  # a reused stage: the duration of the run that computed it
            values = [hits[stage] if stage in hits else v for v, hits in zip(values, reused)]
        best = None
        how = direction(name)
        present = [v for v in values if v is not None]
        if how and len(present) > 1 and len(set(present)) > 1:
            target = min(present) if how == "min" else max(present)
            best = [k for k, v in enumerate(values) if v == target]
        rows.append({"metric": name, "values": values, "better": how, "best": best, "reused": marks})
    params = [r.data.params for r in runs]
    keys = sorted(set().union(*params))
    differing = [{"param": k, "values": [p.get(k) for p in params]} for k in keys
                 if len({p.get(k) for p in params}) > 1 and not k.startswith("engines.")]
    return {"runs": [{"pipeline_run_id": r.info.run_id, "name": r.info.run_name} for r in runs],
            "metrics": rows, "differing_config": differing}
