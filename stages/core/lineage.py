"""Resolving a stage's inputs from the upstream stage *runs* of the same pipeline run.

Shared by the inline executor (in the flow's process) and by ``python -m stages ...
--upstream STAGE=RUN_ID`` (what the ray-job executor submits to a cluster), so both
read exactly the same files with exactly the same digests.
"""

from __future__ import annotations

from stages.core.contract import StageInput
from stages.core.digests import sha256_json
from stages.core.errors import StageError
from stages.core.manifest import read_manifest
from stages.core.tracking import Tracker


def upstream_input(tracker: Tracker, name: str, spec: str, stage_runs: dict[str, str]) -> StageInput:
    """Resolve ``"upstream_stage:output"`` to the local output of that stage's run.
    ``"ppo|dpo:model"`` takes the first of those stages that ran (the alignment path chosen)."""
    choices, _, output = spec.partition(":")
    upstream = next((u for u in choices.split("|") if u in stage_runs), choices.split("|")[0])
    run_id = stage_runs.get(upstream)
    if run_id is None:
        raise StageError(f"input '{name}' needs stage '{' or '.join(choices.split('|'))}', which has not run in "
                         f"this pipeline run")
    root = tracker.artifacts_path(run_id)
    manifest = read_manifest(root)
    rel = manifest["named_outputs"].get(output)
    if rel is None:
        raise StageError(f"run {run_id} of '{upstream}' has no output '{output}'")
    prefix = rel.rstrip("/")
    digests = {k: v for k, v in manifest["outputs"].items() if k == prefix or k.startswith(prefix + "/")}
    return StageInput(name=name, path=root / rel, digest=sha256_json(sorted(digests.items())), run_id=run_id)
