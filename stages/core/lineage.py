"""Resolving a stage's inputs from the upstream stage *runs* of the same pipeline run.

Shared by the inline executor (in the flow's process) and by ``python -m stages ...
--upstream STAGE=RUN_ID`` (what the ray-job executor submits to a cluster), so both
read exactly the same files with exactly the same digests.
"""

from __future__ import annotations

from stages.core.contract import Stage, StageInput, parse_input
from stages.core.digests import sha256_json
from stages.core.errors import StageError
from stages.core.manifest import read_manifest
from stages.core.tracking import Tracker


def upstream_input(tracker: Tracker, name: str, spec: str, stage_runs: dict[str, str]) -> StageInput:
    """Resolve ``"upstream_stage:output"`` to the local output of that stage's run.
    ``"ppo|dpo:model"`` takes the first of those stages that ran (the alignment path chosen)."""
    choices, output, _ = parse_input(spec)
    upstream = next((u for u in choices if u in stage_runs), choices[0])
    run_id = stage_runs.get(upstream)
    if run_id is None:
        raise StageError(f"input '{name}' needs stage '{' or '.join(choices)}', which has not run in "
                         f"this pipeline run")
    root = tracker.artifacts_path(run_id)
    manifest = read_manifest(root)
    rel = manifest["named_outputs"].get(output)
    if rel is None:
        raise StageError(f"run {run_id} of '{upstream}' has no output '{output}'")
    prefix = rel.rstrip("/")
    digests = {k: v for k, v in manifest["outputs"].items() if k == prefix or k.startswith(prefix + "/")}
    return StageInput(name=name, path=root / rel, digest=sha256_json(sorted(digests.items())), run_id=run_id)


def wired(stage: type[Stage] | Stage, stage_runs: dict[str, str]) -> dict[str, str]:
    """The inputs of ``stage`` this pipeline run wires: all of them, but a "?" input only when its stage ran."""
    return {name: spec for name, spec in stage.inputs.items()
            if not parse_input(spec)[2] or any(u in stage_runs for u in parse_input(spec)[0])}


def upstream_inputs(tracker: Tracker, stage: type[Stage] | Stage, stage_runs: dict[str, str]) -> dict[str, StageInput]:
    return {name: upstream_input(tracker, name, spec, stage_runs) for name, spec in wired(stage, stage_runs).items()}
