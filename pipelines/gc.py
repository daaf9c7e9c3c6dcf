"""What ``lmforge gc`` may delete and how much that frees.

Needed (never touched): stage runs that hold an aliased registered model version (the
``production`` one above all), the version a rollback of ``production`` would return to,
and each registered model's newest version; the stage runs of the ``keep`` (at least 1)
most recent pipeline runs; and anything a running pipeline uses. The rest of the stage
runs lose their artifacts and are deleted in MLflow (so the cache never offers a run whose files are gone); stage work
dirs of pipelines that are not running (on local disk and on object storage), Ray Train checkpoints of no needed
run (in both places), the serving copies on object storage of models whose runs go, and the
object-spill folders of Ray sessions that are no longer alive go too, and so do the temp
dirs that killed stages left beside their outputs (found through their owner records).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from stages.core import names
from pipelines import runs
from stages.core.atomic import registered_stale_temps, remove_temp
from stages.core.errors import ConfigError
from stages.core.paths import lmforge_home, work_root
from stages.core.tracking import local_path_of
from stages.deploy.serving import SERVE_FOLDER


@dataclass
class Item:
    kind: str  # stage-run, work-dir, checkpoint, serve-copy, ray-spill, partial-output
    path: Path | None
    bytes: int
    run_id: str | None = None
    label: str = ""
    location: str | None = None  # on object storage (engines.storage / LMFORGE_STORAGE), not a local path


@dataclass
class Plan:
    delete: list[Item] = field(default_factory=list)
    kept_runs: int = 0

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.delete)


def size_of(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def protected_versions(client) -> list[tuple[str, str, str]]:
    """(model, version, why) of every registered version gc must leave alone: each aliased version
    (aliases read from the registered model: ``search_model_versions`` returns versions without
    them), the version a ``production`` rollback would go back to, and each model's newest version."""
    from stages.deploy.promotion import PREVIOUS_TAG

    found: dict[tuple[str, str], str] = {}
    for model in client.search_registered_models(max_results=1000):
        for alias, version in sorted((model.aliases or {}).items()):
            found.setdefault((model.name, str(version)), f"@{alias}")
            previous = client.get_model_version(model.name, str(version)).tags.get(PREVIOUS_TAG)
            if previous:
                found.setdefault((model.name, str(previous)), f"rollback target of @{alias}")
        newest = client.search_model_versions(f"name = '{model.name}'", order_by=["version_number DESC"],
                                              max_results=1)
        if newest:
            found.setdefault((model.name, str(newest[0].version)), "newest version")
    return [(name, version, why) for (name, version), why in sorted(found.items())]


def _registered_runs(client, stage_runs) -> set[str]:
    """Stage runs holding a protected version's files: its run, and any run whose artifacts its source lies in."""
    needed = set()
    roots = {r.info.run_id: r.info.artifact_uri.rstrip("/") + "/" for r in stage_runs}
    for name, number, _ in protected_versions(client):
        version = client.get_model_version(name, number)
        if version.run_id:
            needed.add(version.run_id)
        source = (version.source or "").rstrip("/") + "/"
        needed.update(run_id for run_id, root in roots.items() if source.startswith(root))
    return needed


def _stage_runs_of(client, pipeline_run) -> set[str]:
    used = set(runs._pairs(pipeline_run.data.tags.get(names.TAG_STAGE_RUNS, "")).values())
    children = client.search_runs([pipeline_run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{pipeline_run.info.run_id}'",
                                  max_results=500)
    return used | {c.info.run_id for c in children}


def plan(client, keep: int) -> Plan:
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (the newest pipeline run is always kept), got {keep}")
    result = Plan()
    live_runs: set[str] = set()
    needed_keys: set[str] = set()
    if runs.experiment_ids(client):
        live_runs, needed_keys = _plan_runs(client, keep, result)
    _plan_object_storage(live_runs, needed_keys, result)
    for spill in _dead_ray_spills():
        result.delete.append(Item("ray-spill", spill, size_of(spill), label=str(spill.parent.name)))
    planned = [item.path for item in result.delete if item.path is not None]
    for partial in registered_stale_temps():  # what killed stages left beside their outputs
        if not any(partial.is_relative_to(p) for p in planned):
            result.delete.append(Item("partial-output", partial, size_of(partial), label=str(partial)))
    return result


def _plan_runs(client, keep: int, result: Plan) -> tuple[set[str], set[str]]:
    """Stage runs, work dirs and checkpoints that neither a protected model version nor the ``keep`` newest
    (or a running) pipeline run needs. Returns the stage runs of running pipelines, and the cache keys (20
    characters) whose checkpoints stay."""
    ids = runs.experiment_ids(client)
    pipelines = runs.recent_pipeline_runs(client, limit=5000)
    running = [p for p in pipelines if runs.pipeline_state(p) == "RUNNING"]
    stage_runs = client.search_runs(ids, filter_string=f"tags.`{names.TAG_STAGE}` != ''", max_results=50000)
    needed = _registered_runs(client, stage_runs)
    for pipeline_run in pipelines[:keep] + running:
        needed |= _stage_runs_of(client, pipeline_run)
    result.kept_runs = len([r for r in stage_runs if r.info.run_id in needed])
    needed_keys = {r.data.tags.get(names.TAG_CACHE_KEY, "")[:20] for r in stage_runs if r.info.run_id in needed}
    for r in stage_runs:
        if r.info.run_id in needed or r.info.status == "RUNNING":
            if r.info.status == "RUNNING":
                needed_keys.add(r.data.tags.get(names.TAG_CACHE_KEY, "")[:20])
            continue
        path = local_path_of(r.info.artifact_uri)
        result.delete.append(Item("stage-run", path, size_of(path) if path else 0, r.info.run_id,
                                  f"{r.data.tags.get(names.TAG_STAGE)} {r.info.run_id}"))
    live = {p.info.run_id for p in running}
    live_stage_runs = set().union(*(_stage_runs_of(client, p) for p in running)) if running else set()
    if work_root().exists():
        for folder in sorted(work_root().iterdir()):
            if folder.name not in live:
                result.delete.append(Item("work-dir", folder, size_of(folder), label=folder.name))
    train = lmforge_home() / "train"
    if train.exists():
        for folder in sorted(train.iterdir()):
            key = folder.name.rsplit("-", 1)[-1]
            if folder.is_dir() and key not in needed_keys:
                result.delete.append(Item("checkpoint", folder, size_of(folder), label=folder.name))
    return live_stage_runs, needed_keys


def _plan_object_storage(live_stage_runs: set[str], needed_keys: set[str], result: Plan) -> None:
    """On object storage: work folders that killed stages left (their pipeline is not running, or their
    ``lmforge stage`` process on this host is gone; see ``work_name``), checkpoints of no needed run, and the
    serving copies (``serve/<run id>``) of models whose runs go."""
    import psutil

    from stages.core import storage
    from stages.core.contract import work_owner

    root = storage.configured_storage()
    if root is None:
        return
    for stage_dir in storage.list_dirs(storage.join(root, "work")):
        for folder in storage.list_dirs(stage_dir):
            owner = work_owner(storage.name_of(folder))
            if owner is None or (owner[0] == "run" and owner[1] in live_stage_runs) or \
                    (owner[0] == "process" and psutil.pid_exists(int(owner[1]))):
                continue
            result.delete.append(Item("work-dir", None, storage.tree_bytes(folder), label=folder, location=folder))
    for folder in storage.list_dirs(storage.join(root, "train")):
        if storage.name_of(folder).rsplit("-", 1)[-1] not in needed_keys:
            result.delete.append(Item("checkpoint", None, storage.tree_bytes(folder), label=folder, location=folder))
    removed_runs = {item.run_id for item in result.delete if item.kind == "stage-run"}
    for folder in storage.list_dirs(storage.join(root, SERVE_FOLDER)):  # a served model's copy goes with its run
        if storage.name_of(folder) in removed_runs:
            result.delete.append(Item("serve-copy", None, storage.tree_bytes(folder), label=folder, location=folder))


def _dead_ray_spills() -> list[Path]:
    import psutil

    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    if not root.exists():
        return []
    live = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or []:
            if "session_" in arg and str(root) in arg:
                live.update(part for part in Path(arg.split("=")[-1]).parts if part.startswith("session_"))
    latest = root / "session_latest"
    if latest.is_symlink():
        live.add(Path(os.readlink(latest)).name)
    return [spill for session in sorted(root.glob("session_2*")) if session.name not in live
            for spill in session.glob("ray_spilled_objects*")]


def apply(client, result: Plan) -> None:
    from stages.core import storage

    for item in result.delete:
        if item.location is not None:
            storage.remove_tree(item.location)
        elif item.kind == "partial-output" and item.path is not None:
            remove_temp(item.path)
        elif item.path is not None:
            shutil.rmtree(item.path, ignore_errors=True) if item.path.is_dir() else item.path.unlink(missing_ok=True)
        if item.kind == "stage-run" and item.run_id:
            client.set_tag(item.run_id, names.TAG_GC, "artifacts removed by lmforge gc")
            client.delete_run(item.run_id)
