"""``lmforge stage NAME`` / ``python -m stages NAME``: one stage on plain files.

No Prefect, no server: inputs are paths, outputs go to ``--output DIR``, and stdout
ends with one JSON line of counts and output paths. The Ray-job executor submits
exactly this command, so it is also how a stage runs on a cluster.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stages.core import names
from stages.core.configuration import apply_overrides, load_yaml, validate
from stages.core.errors import ConfigError, LmforgeError


def setup_logging(verbose: bool = False) -> None:
    """lmforge's own logs at INFO (DEBUG with --verbose) on stderr; third-party noise off unless verbose."""
    from stages.core.quiet import quiet_third_party

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    quiet_third_party(verbose or None)


def standalone_config(name: str, config_path: Optional[Path], overrides: list[str]) -> tuple[Any, int, str]:
    """The stage's config section (from a pipeline YAML or defaults) with ``--set`` applied."""
    from stages.registry import get_stage

    stage = get_stage(name)
    data = load_yaml(config_path) if config_path else {}
    for item in overrides:
        section = item.partition("=")[0].split(".", 1)[0]
        if section not in (name, "pipeline"):
            raise ConfigError(f"--set {item}: standalone '{name}' takes '{name}.<field>=...' or 'pipeline.seed=...'")
    data = apply_overrides(data, overrides)
    pipeline = data.get("pipeline") or {}
    seed = pipeline.get("seed", 0) if isinstance(pipeline, dict) else 0
    if not isinstance(seed, int):
        raise ConfigError(f"bad value for 'pipeline.seed' ({seed!r}): must be an integer")
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"section '{name}' must be a mapping of fields")
    pipeline_name = str(pipeline.get("name", "demo")) if isinstance(pipeline, dict) else "demo"
    return validate(stage.config_model, section, prefix=f"{name}."), seed, pipeline_name


def parse_inputs(items: list[str]) -> dict[str, list[str]]:
    """``NAME=PATH`` or a bare ``PATH`` (the ``docs`` input); repeated names accumulate."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or "/" in name or not name.isidentifier():
            name, path = "docs", item
        parsed.setdefault(name, []).append(path)
    return parsed


def parse_upstream(items: list[str]) -> dict[str, str]:
    """``STAGE=RUN_ID`` pairs naming the upstream runs a tracked run reads its inputs from."""
    parsed = {}
    for item in items:
        stage, sep, run_id = item.partition("=")
        if not sep or not stage or not run_id:
            raise ConfigError(f"--upstream expects STAGE=MLFLOW_RUN_ID, got {item!r}")
        parsed[stage] = run_id
    return parsed


def run_standalone(name: str, inputs: list[str], output: Path, config_path: Optional[Path],
                   overrides: list[str], ray_address: Optional[str], *, parent_run: Optional[str] = None,
                   upstream: Optional[list[str]] = None, tracking_uri: Optional[str] = None,
                   reuse: bool = True, submission_id: Optional[str] = None,
                   storage: Optional[str] = None) -> dict[str, Any]:
    from stages.core.runner import Tracking, execute_stage
    from stages.registry import get_stage

    stage = get_stage(name)
    config, seed, pipeline_name = standalone_config(name, config_path, overrides)
    tracking = None
    if parent_run:
        # a pipeline's stage run (the ray-job executor): inputs from upstream runs, tracked
        from stages.core.lineage import upstream_inputs
        from stages.core.tracking import Tracker

        if inputs:
            raise ConfigError("--parent-run takes its inputs from --upstream runs, not --input paths")
        tracker = Tracker(pipeline_name, tracking_uri)
        runs = parse_upstream(upstream or [])
        resolved = upstream_inputs(tracker, stage, runs)
        extra = {names.TAG_RAY_SUBMISSION: submission_id} if submission_id else {}
        tracking = Tracking(tracker, parent_run_id=parent_run, reuse=reuse, extra_tags=extra)
    else:
        parsed = parse_inputs(inputs)
        for input_name, (kind, alias) in stage.registered_defaults.items():
            if input_name not in parsed:  # standalone defaults to the registered model (docs/architecture.md)
                from stages.core.tracking import find_registered

                found = find_registered(names.registered_model(pipeline_name, kind), alias, tracking_uri)
                if found is not None:
                    print(f"{name}: --input {input_name} defaults to {names.registered_model(pipeline_name, kind)}@{alias} "
                          f"({found})", file=sys.stderr)
                    parsed[input_name] = [str(found)]
        config, resolved = stage.standalone_inputs(config, parsed)
    result = execute_stage(stage, config, resolved, output, seed=seed, ray_address=ray_address,
                           pipeline_name=pipeline_name, tracking=tracking, storage=storage)
    if tracking is not None and submission_id:
        # what the ray-job executor reads back: which run this job produced or reused, keyed by the job
        tracking.tracker.set_tags(parent_run, {names.job_result_tag(name): json.dumps(
            {"submission_id": submission_id, "run_id": result.run_id, "cache_hit": result.cache_hit})})
    outputs = {key: str(result.output_dir / rel) for key, rel in result.manifest.get("named_outputs", {}).items()}
    return {
        "stage": name,
        "run_id": result.run_id,
        "cache_hit": result.cache_hit,
        "output": str(result.output_dir),
        "counts": result.counts,
        "outputs": outputs,
        "manifest": str(result.output_dir / "manifest.json"),
        "cache_key": result.manifest["cache_key"],
        "duration_s": round(result.duration_s, 2),
    }


def stage_command(
    name: Annotated[str, typer.Argument(help="Stage to run: ingest, dedup, quality, ... (see `lmforge config show`).")],
    input: Annotated[list[str], typer.Option("--input", "-i", help="[NAME=]PATH of an input; a bare path is the 'docs' input. Repeatable.")] = [],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the outputs and manifest.json (replaced atomically).")] = ...,  # type: ignore[assignment]
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Pipeline YAML to take this stage's section from.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a field: STAGE.field=value (YAML scalar). Repeatable.")] = [],
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to use instead of a local one.")] = None,
    parent_run: Annotated[Optional[str], typer.Option("--parent-run", help="Run as a stage of this MLflow pipeline run (tracked, cached, inputs from --upstream runs); what the ray-job executor submits.")] = None,
    upstream: Annotated[list[str], typer.Option("--upstream", help="STAGE=MLFLOW_RUN_ID of an upstream stage run (with --parent-run). Repeatable.")] = [],
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow store for --parent-run (default: SQLite under LMFORGE_HOME).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="With --parent-run: run even if a run with the same cache key exists (a rerun asked for).")] = False,
    submission_id: Annotated[Optional[str], typer.Option("--submission-id", help="With --parent-run: the Ray job's submission id, recorded on the stage run and the pipeline run for the ray-job executor.")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", envvar="LMFORGE_STORAGE", help="Object storage (s3://bucket/prefix) for the stage's work files, so Ray tasks on nodes that share no disk reach them; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. Default: the output folder's disk.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run one stage on plain files, with no Prefect and no server.

    Document stages write OUT/kept.jsonl (or kept/ Parquet shards), OUT/removed.jsonl,
    OUT/quarantined.jsonl and OUT/manifest.json. Progress goes to stderr; stdout ends
    with one JSON line of counts and output paths.
    """
    setup_logging(verbose)
    try:
        summary = run_standalone(name, input, output, config, set_, ray_address, parent_run=parent_run,
                                 upstream=upstream, tracking_uri=tracking_uri, reuse=not no_cache,
                                 submission_id=submission_id, storage=storage)
    except LmforgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    from stages.core.ray_runtime import stop_ray

    stop_ray()
    typer.echo(json.dumps(summary, sort_keys=True))


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=stage_command.__doc__)(stage_command)
    app()
