"""Driver side of SFT / reward / DPO: start ``trainer.train_worker`` on Ray Train with the
same scaling, placement and environment as pretraining, then copy the final model out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stages.core import names, storage as store
from stages.alignment.lora import ADAPTER_DIR, check_targets
from stages.alignment.trainer import MARKER, MODEL_DIR, TRAIN_LOG, train_worker
from stages.core.contract import StageContext
from stages.core.errors import ConfigError, StageError
from stages.core.ray_runtime import ensure_ray
from stages.core.tracking import register_artifact
from stages.pretrain.distributed import scaling_config, train_env
from stages.pretrain.loop import checkpoint_at
from stages.pretrain.stage import latest_checkpoint, train_storage


def check_batch(stage: str, cfg) -> None:
    per_step = cfg.micro_batch_size * cfg.distributed.num_workers
    if cfg.global_batch_size % per_step:
        raise ConfigError(f"{stage}.global_batch_size ({cfg.global_batch_size}) must be a multiple of "
                          f"{stage}.micro_batch_size x distributed.num_workers = {per_step}")


def train(ctx: StageContext, model_dir: Path, train_rows: Path, heldout_rows: Path) -> list[dict[str, Any]]:
    """Run the stage's recipe on Ray Train; the model lands in ``ctx.output_dir/model``.
    Returns the step history (also written as ``train_log.jsonl``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    cfg = ctx.config
    check_batch(ctx.stage, cfg)
    if cfg.lora is not None:
        check_targets(model_dir, cfg.lora, f"{ctx.stage}.lora.target_modules")
    train_env(ctx.ray_address)
    ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
    dist = cfg.distributed
    tracker = ctx.tracker
    # the model and the rows as the workers reach them: on object storage when nodes share no disk
    job = {"stage": ctx.stage, "config_model": type(cfg), "config": cfg.model_dump(mode="json"),
           "model_dir": ctx.for_workers(model_dir, "model"), "train": ctx.for_workers(train_rows, "train.jsonl"),
           "heldout": ctx.for_workers(heldout_rows, "heldout.jsonl"), "seed": ctx.seed,
           "run_id": ctx.run_id, "tracking_uri": tracker.tracking_uri if tracker is not None else None}
    name = f"{ctx.stage}-{ctx.cache_key[:20] or 'adhoc'}"
    train_root, where = train_storage(ctx)  # checkpoints where pretrain keeps its own
    run_dir = store.join(train_root, name)
    resume = latest_checkpoint(run_dir, dist.num_workers) if cfg.checkpoint_every else None
    if resume is not None:  # the same stage run (same cache key) killed before: go on from its newest state
        ctx.log.info("%s: resuming from %s", ctx.stage, resume)
        job["resume_from"] = resume
    else:
        store.remove_tree(run_dir)  # nothing to resume: a clean start
    out = ctx.output_dir
    if resume is not None and json.loads(store.read_bytes(store.join(resume, MARKER))).get("final"):
        with checkpoint_at(resume).as_directory() as folder:
            _copy_model(Path(folder), out)  # training had finished when the run was stopped: its model is whole
    else:
        trainer = TorchTrainer(
            train_worker, train_loop_config=job,
            scaling_config=scaling_config(dist),
            run_config=RunConfig(name=name, **where,
                                 failure_config=FailureConfig(max_failures=dist.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        result = trainer.fit()
        if result.error:
            raise StageError(f"{ctx.stage}: training failed: {result.error}")
        with result.checkpoint.as_directory() as folder:  # local path, or downloaded from object storage
            if not json.loads((Path(folder) / MARKER).read_text()).get("final"):
                raise StageError(f"{ctx.stage}: the last checkpoint is not the final model")
            _copy_model(Path(folder), out)
    store.remove_tree(run_dir)
    return [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]


def _copy_model(final: Path, out: Path) -> None:
    shutil.copytree(final / MODEL_DIR, out / MODEL_DIR)
    shutil.copy2(final / TRAIN_LOG, out / TRAIN_LOG)
    if (final / ADAPTER_DIR).is_dir():
        shutil.copytree(final / ADAPTER_DIR, out / ADAPTER_DIR)


def parameter_figures(history: list[dict[str, Any]]) -> dict[str, float]:
    """How many parameters trained (all of them, or a LoRA adapter's) and how many the model has."""
    first = next((h for h in history if "trainable_parameters" in h), {})
    return {k: first[k] for k in ("trainable_parameters", "parameters") if k in first}


def model_outputs(output_dir: Path) -> dict[str, str]:
    """The model folder, and the LoRA adapter it was merged from when there is one."""
    return {"model": f"{MODEL_DIR}/", **({"adapter": f"{ADAPTER_DIR}/"} if (output_dir / ADAPTER_DIR).is_dir() else {})}


def register_policy(tracker, run_id: str, output_dir: Path, pipeline_name: str, alias: str) -> dict[str, str]:
    """Log the sample table (prompt, answers, verdicts) and register the model as
    ``lmforge-<cfg>-lm@<alias>``: what sft, ppo and dpo do once their artifacts are logged."""
    samples = output_dir / "samples.json"
    if samples.exists():
        tracker.client.log_table(run_id, data=json.loads(samples.read_text()), artifact_file="samples_table.json")
    name = names.registered_model(pipeline_name, "lm")
    version = register_artifact(tracker, name, run_id, MODEL_DIR, alias)
    return {names.TAG_REGISTERED_MODEL: f"{name}/{version}"}
