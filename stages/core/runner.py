"""Run one stage under the contract: cache key, atomic outputs, manifest, MLflow run.

This is the single place the contract is implemented; the standalone CLI, the
Prefect flow (inline) and the Ray-job executor (through the standalone CLI) all call
``execute_stage``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stages.core import names
from stages.core.atomic import atomic_output_dir
from stages.core.codehash import code_hash
from stages.core.contract import Stage, StageConfig, StageContext, StageInput, StageResult
from stages.core.digests import sha256_json, tree_digests
from stages.core.environment import environment_hash, hardware, library_versions
from stages.core.errors import ConfigError, LmforgeError, StageError, cancel_requested, raise_if_cancel_requested
from stages.core.manifest import MANIFEST, read_manifest, write_manifest
from stages.core.names import TAG_CACHE_KEY, TAG_COMPLETE, TAG_PIPELINE, TAG_STAGE
from stages.core.storage import check_storage, configured_storage, remove_tree
from stages.core.tracking import Tracker

log = logging.getLogger("lmforge.runner")


@dataclass
class StageRun:
    """Where a stage's outputs are and how they were obtained."""

    stage: str
    output_dir: Path
    manifest: dict[str, Any]
    run_id: str | None = None
    cache_hit: bool = False
    duration_s: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest.get("counts", {})


@dataclass
class Tracking:
    """Where the child run goes: which tracker, under which parent pipeline run."""

    tracker: Tracker
    parent_run_id: str | None = None
    reuse: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)


def cache_key(stage: Stage, config: StageConfig, seed: int, inputs: dict[str, StageInput]) -> str:
    return sha256_json(
        {
            "stage": stage.name,
            "config": config.model_dump(mode="json"),
            "seed": seed,
            "inputs": {name: item.digest for name, item in sorted(inputs.items())},
            "code": code_hash(stage.module()),
            "environment": environment_hash(),
        }
    )


def check_invariant(stage: str, counts: dict[str, int]) -> None:
    """Document stages lose nothing: every record in is kept, removed or quarantined."""
    expected = counts.get("in")
    total = counts.get("kept", 0) + counts.get("removed", 0) + counts.get("quarantined", 0)
    if expected != total:
        raise StageError(
            f"{stage}: record invariant broken: in={expected} but kept+removed+quarantined={total} ({counts})"
        )
    log.info("%s: in=%d = kept %d + removed %d + quarantined %d", stage, expected,
             counts.get("kept", 0), counts.get("removed", 0), counts.get("quarantined", 0))


def build_manifest(
    stage: Stage, config: StageConfig, seed: int, inputs: dict[str, StageInput], key: str,
    result: StageResult, output_dir: Path, started: float,
) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "config": config.model_dump(mode="json"),
        "seed": seed,
        "cache_key": key,
        "inputs": {
            name: {"path": str(item.path), "digest": item.digest, "run_id": item.run_id}
            for name, item in sorted(inputs.items())
        },
        "upstream_run_ids": sorted({item.run_id for item in inputs.values() if item.run_id}),
        "outputs": tree_digests(output_dir, exclude=frozenset({MANIFEST})),
        "named_outputs": result.outputs,
        "counts": result.counts,
        "metrics": result.metrics,
        "details": result.details,
        "code_hash": code_hash(stage.module()),
        "environment_hash": environment_hash(),
        "versions": library_versions(),
        "hardware": hardware(),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "duration_s": round(time.time() - started, 3),
    }


def execute_stage(
    stage: Stage,
    config: StageConfig,
    inputs: dict[str, StageInput],
    output_dir: Path,
    *,
    seed: int = 0,
    tracking: Tracking | None = None,
    ray_address: str | None = None,
    ray_num_cpus: float | None = None,
    pipeline_name: str = "demo",
    storage: str | None = None,
) -> StageRun:
    started = time.time()
    storage = configured_storage(storage)
    if storage is not None:
        check_storage(storage)  # wrong credentials or a missing bucket: one line, before any work
    inputs = {**stage.config_inputs(config, seed), **inputs}
    key = cache_key(stage, config, seed, inputs)

    if tracking is not None and tracking.reuse:
        cached = tracking.tracker.find_cached(stage.name, key)
        if cached is not None:
            path = tracking.tracker.artifacts_path(cached)
            log.info("%s: cache hit, reusing run %s", stage.name, cached)
            return StageRun(stage.name, path, read_manifest(path), run_id=cached, cache_hit=True,
                            duration_s=time.time() - started)

    run_id = None
    if tracking is not None:
        tags = {TAG_STAGE: stage.name, TAG_CACHE_KEY: key, **tracking.extra_tags}
        if tracking.parent_run_id:
            tags[TAG_PIPELINE] = tracking.parent_run_id
        run_id = tracking.tracker.start_run(stage.name, tags, parent_run_id=tracking.parent_run_id)
        tracking.tracker.log_params(run_id, config.model_dump(mode="json"))
        tracking.tracker.log_dataset_inputs(run_id, inputs)

    ctx = None
    try:
        with atomic_output_dir(output_dir) as tmp:
            ctx = StageContext(
                stage=stage.name, config=config, inputs=inputs, output_dir=tmp, seed=seed,
                run_id=run_id, tracker=tracking.tracker if tracking else None,
                ray_address=ray_address, ray_num_cpus=ray_num_cpus, pipeline_name=pipeline_name,
                cache_key=key, log=logging.getLogger(f"lmforge.stages.{stage.name}"), storage=storage,
            )
            result = stage.run(ctx)
            raise_if_cancel_requested()  # nothing is committed from a run that was cancelled
            if stage.document_stage:
                check_invariant(stage.name, result.counts)
            manifest = build_manifest(stage, config, seed, inputs, key, result, tmp, started)
            manifest["storage"] = storage or "local"  # where its Ray tasks handed work files to each other
            write_manifest(tmp, manifest)
            if ctx.storage is not None and ctx.work is not None:
                remove_tree(ctx.work)  # what the stage handed to its workers through object storage
        if tracking is not None and run_id is not None:
            tracker = tracking.tracker
            tracker.log_metrics(run_id, {**{f"count.{k}": v for k, v in result.counts.items()}, **result.metrics})
            tracker.log_metrics(run_id, {"duration_s": manifest["duration_s"]})
            tracker.log_artifacts(run_id, output_dir)
            extra = stage.after_logged(tracker, run_id, Path(output_dir), result, pipeline_name)
            tracker.set_tags(run_id, {**extra, TAG_COMPLETE: "true"})
            tracker.finish(run_id)
    except BaseException as exc:
        if ctx is not None and ctx.storage is not None and ctx.work is not None:
            with contextlib.suppress(Exception):  # object storage may be what failed: then the litter stays
                remove_tree(ctx.work)
        if tracking is not None and run_id is not None:
            if cancel_requested(exc):
                tracking.tracker.set_tags(run_id, {names.TAG_ERROR: "cancelled"})
                tracking.tracker.finish(run_id, "KILLED")
            else:
                message = str(exc) if isinstance(exc, LmforgeError) else f"{type(exc).__name__}: {exc}"
                tracking.tracker.fail(run_id, message or type(exc).__name__)
        raise

    if tracking is not None and run_id is not None:
        # The tracked copy is the artifact; the work dir was only the staging area.
        stored = tracking.tracker.artifacts_path(run_id)
        if stored.resolve() != Path(output_dir).resolve():
            shutil.rmtree(output_dir, ignore_errors=True)
            output_dir = stored
    return StageRun(stage.name, Path(output_dir), manifest, run_id=run_id, cache_hit=False,
                    duration_s=time.time() - started)


def input_from_path(name: str, path: Path, run_id: str | None = None) -> StageInput:
    """Resolve a local input, digesting its content (manifest digests when it has one)."""
    path = Path(path).resolve()
    if not path.exists():  # a bad argument, like a bad config: exit 2
        raise ConfigError(f"input {name!r}: {path} does not exist")
    if path.is_dir() and (path / MANIFEST).exists():
        digest = sha256_json(read_manifest(path)["outputs"])
    else:
        digest = sha256_json(tree_digests(path))
    return StageInput(name=name, path=path, digest=digest, run_id=run_id)
