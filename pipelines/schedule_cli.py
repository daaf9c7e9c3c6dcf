"""``lmforge schedule`` and ``lmforge schedules``: the pipeline as a Prefect deployment.

A deployment is the flow plus parameters (config path, ``--set`` overrides, last stage)
and a cron schedule. Two ways to run it: ``--serve`` serves it from this process
(``flow.serve``: one machine, nothing else to start); without it the deployment goes to
a process work pool, and ``prefect worker start --pool POOL`` runs its flow runs (teams:
one or more workers on the machines that have the data). Either way the Prefect UI's
"Run" button and ``prefect deployment run lmforge-pipeline/NAME`` start a run on demand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pipelines.cli_common import console, fail
from stages.core.errors import ConfigError, LmforgeError
from stages.core.paths import repo_root

DEFAULT_POOL = "lmforge-process"
PASSED_ENV = ("LMFORGE_HOME", "LMFORGE_DATA_DIR", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")


def _connect(config: Optional[Path], overrides: list[str]):
    """Validate the config and point this process at the Prefect server (started if needed)."""
    from pipelines.config import load_config
    from pipelines.engines import ensure_prefect, prefect_env

    cfg = load_config(config, overrides)
    prefect = cfg.engines.prefect
    server = ensure_prefect(prefect.host, prefect.port, prefect.api_url, prefect.startup_timeout_s)
    os.environ.update(prefect_env())
    os.environ["PREFECT_API_URL"] = server.url.rstrip("/") + "/api"
    return cfg, server


def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            console.print(f"created process work pool {name}")


def schedule(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline YAML (default: the demo config).")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help='Cron schedule, e.g. "0 3 * * *" (03:00 daily); none = run on demand only.')] = None,
    name: Annotated[str, typer.Option("--name", help="Deployment name (lmforge-pipeline/NAME).")] = "nightly",
    until: Annotated[Optional[str], typer.Option("--until", help="Last stage each run goes to.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a field: section.field=value. Repeatable.")] = [],
    pool: Annotated[str, typer.Option("--pool", help="Process work pool the deployment goes to (created if missing).")] = DEFAULT_POOL,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the deployment from this process until Ctrl-C (flow.serve) instead of a work pool.")] = False,
    timezone: Annotated[str, typer.Option("--timezone", help="Time zone of the cron schedule.")] = "UTC",
) -> None:
    """Register the pipeline as a Prefect deployment with a schedule and parameters.

    Runs then start on the schedule, from the Prefect UI's Run button, or with
    `prefect deployment run lmforge-pipeline/NAME`; a process worker
    (`prefect worker start --pool lmforge-process`) or `--serve` executes them.
    """
    from pipelines.dag import stages_to_run
    from stages.cli import setup_logging

    setup_logging()
    try:
        cfg, server = _connect(config, set_)
        stages_to_run(until, cfg.pipeline.model_dump())
        if cron is not None:
            from prefect.client.schemas.schedules import CronSchedule
            from pydantic import ValidationError

            try:
                CronSchedule(cron=cron, timezone=timezone)
            except ValidationError as exc:
                raise ConfigError(f"--cron/--timezone: {exc.errors()[0]['msg']} (e.g. --cron \"0 3 * * *\")") from None
    except LmforgeError as exc:
        raise fail(exc) from None
    from prefect.schedules import Cron

    from pipelines.flow import pipeline_flow

    config_path = str((config or repo_root() / "pipelines" / "configs" / "demo.yaml").resolve())
    parameters = {"config_path": config_path, "overrides": list(set_), "until": until}
    schedules = [Cron(cron, timezone=timezone)] if cron else None
    if serve:
        console.print(f"serving lmforge-pipeline/{name} from this process ({cron or 'on demand'}); Ctrl-C stops it")
        typer.echo(json.dumps({"deployment": f"lmforge-pipeline/{name}", "parameters": parameters, "cron": cron,
                               "served": True, "prefect_ui": server.url}), err=False)
        pipeline_flow.serve(name=name, schedules=schedules, parameters=parameters, print_starting_message=False)
        return
    _ensure_pool(pool)
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    env.setdefault("LMFORGE_HOME", str(Path(os.environ.get("LMFORGE_HOME", repo_root() / ".lmforge")).resolve()))
    deployment = pipeline_flow.to_deployment(
        name=name, schedules=schedules, parameters=parameters, work_pool_name=pool,
        job_variables={"working_dir": str(repo_root()), "env": env},
        description=f"lmforge pipeline {cfg.pipeline.name} ({config_path})",
        tags=["lmforge", cfg.pipeline.name],
    )
    deployment_id = deployment.apply()
    console.print(f"deployment lmforge-pipeline/{name} ({deployment_id}) on pool {pool}: "
                  f"{cron or 'on demand'}; start a worker with `prefect worker start --pool {pool}`")
    typer.echo(json.dumps({"deployment": f"lmforge-pipeline/{name}", "deployment_id": str(deployment_id),
                           "pool": pool, "cron": cron, "parameters": parameters, "prefect_ui": server.url}))


def schedules(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline YAML (for the Prefect server's address).")] = None,
    upcoming: Annotated[int, typer.Option("--upcoming", help="Next scheduled runs to show per deployment.")] = 3,
) -> None:
    """List the pipeline's Prefect deployments, their schedules and next run times."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, \
        FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    try:
        _connect(config, [])
    except LmforgeError as exc:
        raise fail(exc) from None
    listed = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            flow = client.read_flow(deployment.flow_id)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=upcoming)
            crons = [getattr(s.schedule, "cron", None) or str(s.schedule) for s in deployment.schedules or []]
            listed.append({"deployment": f"{flow.name}/{deployment.name}", "id": str(deployment.id),
                           "pool": deployment.work_pool_name, "schedules": crons, "paused": deployment.paused,
                           "parameters": deployment.parameters,
                           "next_runs": [r.expected_start_time.isoformat() for r in runs if r.expected_start_time]})
    table = Table(show_edge=False)
    for column in ("deployment", "pool", "schedule", "next runs"):
        table.add_column(column)
    for d in listed:
        table.add_row(d["deployment"], d["pool"] or "(served)", ", ".join(d["schedules"]) or "on demand",
                      "\n".join(d["next_runs"]) or "-")
    console.print(table if listed else "no deployments yet (`lmforge schedule --cron ...` registers one)")
    typer.echo(json.dumps({"deployments": listed}))
