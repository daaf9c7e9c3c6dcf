"""The ``lmforge`` command line.

Progress and logs go to stderr; commands that produce a result end stdout with one
JSON line, so scripts can read it. User errors print one line and exit 2 (bad config)
or 1 (a stage failed), never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from pipelines.cli_common import fail
from stages.cli import setup_logging, stage_command
from stages.core.errors import Cancelled, LmforgeError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help=(
        "lmforge: a language model's whole life as one DAG.\n\n"
        "ingest -> dedup -> quality -> tokenize -> pretrain -> align_data -> sft -> reward -> ppo "
        "(or dpo) -> quantize -> deploy, orchestrated by Prefect, executed on Ray, tracked in MLflow.\n\n"
        "Start with `lmforge run` (the demo config), watch it with `lmforge ui` or `lmforge dashboard`, stop servers "
        "with `lmforge down`. `lmforge status`, `rerun`, `resume`, `cancel`, `compare` and `gc` look after pipeline "
        "runs; `lmforge schedule` puts the pipeline on a cron schedule; `lmforge serve` serves the production model, "
        "`lmforge generate` answers one prompt."
    ),
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the pipeline config: merged values or the JSON schema.")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline YAML (default: pipelines/configs/demo.yaml).")]
SetOpt = Annotated[list[str], typer.Option("--set", help="Override a field: section.field=value (YAML scalar). Repeatable.")]


def _emit(summary: dict[str, Any]) -> None:
    from stages.core.ray_runtime import stop_ray

    stop_ray()  # Ray forwards worker output late: stop it so the summary is the last line
    sys.stderr.flush()
    typer.echo(json.dumps(summary))


@app.command()
def run(
    config: ConfigOpt = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Last stage to run (inclusive), e.g. ingest.")] = None,
    set_: SetOpt = [],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the DAG, resolved config and cache hits; run nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the pipeline as a Prefect flow (local Prefect server started if none answers).

    Each stage is a Prefect task and an MLflow child run under one parent run; a stage
    whose cache key matches a finished run is reused. stdout ends with
    {"pipeline_run_id", "prefect_flow_run_id", "stages": {stage: mlflow_run_id}, "cache_hits": [...]}.
    """
    setup_logging(verbose)
    try:
        from pipelines.config import load_config

        cfg = load_config(config, set_)
        if dry_run:
            _emit(_dry_run(cfg, until))
            return
    except LmforgeError as exc:
        raise fail(exc) from None
    _run_and_report(cfg, until, {"config": cfg.model_dump(mode="json"), "until": until,
                                 "config_path": str(config) if config else None})


FromOpt = Annotated[str, typer.Option("--from", help="The MLflow id of the pipeline run to start from (`lmforge status`).")]


@app.command()
def rerun(
    stage: Annotated[str, typer.Argument(help="Stage to rerun, e.g. ppo.", show_default=False)],
    from_: FromOpt = ...,  # type: ignore[assignment]
    only: Annotated[bool, typer.Option("--only", help="Rerun STAGE alone, not the stages downstream of it.")] = False,
    set_: SetOpt = [],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Rerun STAGE of an earlier pipeline run (with --set overrides), then the stages after it.

    The config is the one that run recorded; every stage before STAGE is reused from MLflow
    by cache key (a cache hit), STAGE and its downstream stages run again even if cached.
    The new pipeline run records `lmforge.rerun_of` = the old one. The same is available to
    Prefect deployments as the flow parameters rerun_from / rerun_stage / only / overrides.
    """
    _rerun(from_, stage, only, set_, verbose)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The MLflow id of the pipeline run to resume.", show_default=False)],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Resume a failed or cancelled pipeline run at the stage where it stopped.

    Finished stages are cache hits; the run goes on to the stage the old run was meant to reach.
    """
    _rerun(run_id, None, False, [], verbose)


def _rerun(from_run: str, stage: Optional[str], only: bool, overrides: list[str], verbose: bool) -> None:
    setup_logging(verbose)
    try:
        from mlflow.tracking import MlflowClient

        from pipelines.rerun import plan_rerun
        from stages.core.tracking import default_tracking_uri

        plan = plan_rerun(MlflowClient(default_tracking_uri()), from_run, stage, only, overrides)
    except LmforgeError as exc:
        raise fail(exc) from None
    _run_and_report(plan.config, plan.until, {"rerun_from": from_run, "rerun_stage": stage, "only": only,
                                              "overrides": overrides})


def _run_and_report(cfg, until: Optional[str], flow_params: dict[str, Any]) -> None:
    try:
        summary = _run_flow(cfg, until, flow_params)
        if cfg.deploy.keep_running and "deploy" in summary.get("stages", {}) \
                and "deploy" not in summary.get("cache_hits", []):
            _keep_serving(summary)  # the app lives on this process's Ray: serve until stopped
            return
    except LmforgeError as exc:
        summary = getattr(exc, "summary", None)
        if summary:
            _emit({**summary, "error": str(exc)})
        if isinstance(exc, Cancelled) or getattr(exc, "cancelled", False):
            # Runs are closed and Ray is shut down; an interpreter teardown after Ray calls were interrupted
            # can crash in Ray's threads, so a cancelled run exits here, with its own code.
            _shutdown_ray()
            typer.echo(f"error: {exc}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        raise fail(exc) from None
    finally:
        _shutdown_ray()
    _emit(summary)


def _keep_serving(summary: dict[str, Any]) -> None:
    from pipelines.serve_cli import wait_until_stopped

    typer.echo(json.dumps(summary))
    sys.stdout.flush()
    typer.echo("deploy.keep_running: the model stays served until Ctrl-C or SIGTERM "
               "(`lmforge serve` serves production without running the pipeline)", err=True)
    wait_until_stopped()


def _run_flow(cfg, until: Optional[str], flow_params: dict[str, Any]) -> dict[str, Any]:
    from pipelines.engines import ensure_prefect, prefect_env

    from pipelines.dag import stages_to_run

    stages_to_run(until, cfg.pipeline.model_dump())  # fail fast on a bad --until, before starting servers
    from stages.core.storage import check_storage, configured_storage

    storage = configured_storage(cfg.engines.storage)
    if storage is not None:  # a missing bucket or refused credentials: one line, exit 2, before anything starts
        check_storage(storage)
    prefect = cfg.engines.prefect
    server = ensure_prefect(prefect.host, prefect.port, prefect.api_url, prefect.startup_timeout_s)
    os.environ.update(prefect_env())
    os.environ["PREFECT_API_URL"] = server.url.rstrip("/") + "/api"
    typer.echo(f"Prefect UI: {server.url}  (flow runs are kept there)", err=True)

    from pipelines.flow import pipeline_flow

    state = pipeline_flow(**flow_params, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        if isinstance(result, LmforgeError):
            raise result
        raise LmforgeError(f"pipeline failed: {type(result).__name__}: {result}")
    return result


def _dry_run(cfg, until: Optional[str]) -> dict[str, Any]:
    from pipelines.executors import InlineExecutor
    from pipelines.dag import stages_to_run
    from stages.core.tracking import Tracker
    from stages.registry import get_stage

    names = stages_to_run(until, cfg.pipeline.model_dump())
    tracker = Tracker(cfg.pipeline.name, cfg.engines.mlflow.tracking_uri)
    executor = InlineExecutor(cfg, tracker, parent_run_id=None)
    typer.echo("DAG: " + " -> ".join(names))
    for name in names:
        stage = get_stage(name)
        inputs = ", ".join(f"{k} <- {v.rstrip('?')}" + (" (when it runs)" if v.endswith("?") else "")
                           for k, v in stage.inputs.items()) or "config"
        typer.echo(f"  {name}: inputs {inputs}")
    typer.echo("\nResolved config:")
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    plan: dict[str, Any] = {}
    stage_runs: dict[str, str] = {}
    hits = []
    typer.echo("\nCache:")
    for name in names:
        try:
            key, cached = executor.cached_run(name, stage_runs)
        except LmforgeError as exc:
            typer.echo(f"  {name}: unknown until upstream runs ({exc})")
            plan[name] = None
            break
        plan[name] = {"cache_key": key, "cached_run_id": cached}
        if cached:
            hits.append(name)
            stage_runs[name] = cached
            typer.echo(f"  {name}: cache hit, would reuse run {cached}")
        else:
            typer.echo(f"  {name}: would run (key {key[:12]}...)")
            for later in names[names.index(name) + 1:]:
                plan[later] = None
                typer.echo(f"  {later}: would run (inputs not known until {name} runs)")
            break
    return {"dry_run": True, "stages": names, "plan": plan, "cache_hits": hits}


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


app.command(
    "stage",
    help=stage_command.__doc__,
    short_help="Run one stage on plain files, with no Prefect and no server.",
)(stage_command)


from pipelines.serve_cli import generate, rollback, serve  # noqa: E402 - the subcommands are registered on `app`, defined above

from pipelines.runs_cli import cancel, compare, dashboard, gc, status  # noqa: E402 - the subcommands are registered on `app`, defined above

from pipelines.schedule_cli import schedule, schedules  # noqa: E402 - the subcommands are registered on `app`, defined above

app.command("schedule")(schedule)
app.command("schedules")(schedules)
app.command("status")(status)
app.command("compare")(compare)
app.command("cancel")(cancel)
app.command("gc")(gc)
app.command("dashboard")(dashboard)
app.command("serve")(serve)
app.command("rollback")(rollback)
app.command("generate")(generate)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = []) -> None:
    """Print the merged config (defaults <- YAML <- --set) as YAML."""
    from pipelines.config import load_config

    try:
        cfg = load_config(config, set_)
    except LmforgeError as exc:
        raise fail(exc) from None
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the pipeline config (every section, field, default and bound)."""
    from pipelines.config import PipelineConfig

    typer.echo(json.dumps(PipelineConfig.model_json_schema(), indent=2))


@app.command()
def ui(
    config: ConfigOpt = None,
    set_: SetOpt = [],
) -> None:
    """Start (or find) the Prefect UI and the MLflow UI on 127.0.0.1 and print their URLs."""
    from pipelines.config import load_config
    from pipelines.engines import ensure_mlflow_ui, ensure_prefect

    setup_logging()
    try:
        cfg = load_config(config, set_)
        prefect = cfg.engines.prefect
        servers = [
            ensure_prefect(prefect.host, prefect.port, prefect.api_url, prefect.startup_timeout_s),
            ensure_mlflow_ui(cfg.engines.mlflow.ui_host, cfg.engines.mlflow.ui_port),
        ]
    except LmforgeError as exc:
        raise fail(exc) from None
    from stages.core.tracking import ui_link

    for server in servers:
        how = "started" if server.started else "already running"
        url = ui_link(server.url) if server.name == "mlflow" else server.url  # the classic runs view
        typer.echo(f"{server.name}: {url} ({how})", err=True)
    _emit({server.name: server.url for server in servers})


@app.command()
def down() -> None:
    """Stop the servers lmforge started (by pid); servers it found running are left alone."""
    from pipelines.engines import stop_started

    stopped = stop_started()
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing (no server started by lmforge is running)"),
               err=True)
    _emit({"stopped": stopped})


if __name__ == "__main__":
    app()
