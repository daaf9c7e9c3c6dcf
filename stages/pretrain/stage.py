"""pretrain on Ray Train: a ``TorchTrainer`` runs ``loop.train_worker`` on N workers with
DeepSpeed ZeRO; checkpoints go to ``$LMFORGE_HOME/train/<cache key>`` (or ``<storage>/train/``
on object storage, Ray Train's ``storage_path``) so running the same stage again after a kill
resumes where the last checkpoint left off. With object storage, the token shards and the
tokenizer are staged there too, and each worker fetches them: no node needs the driver's disk."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from stages.core import names, storage as store
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.core.errors import ConfigError, StageError
from stages.core.paths import lmforge_home
from stages.core.ray_runtime import ensure_ray
from stages.core.tracking import register_artifact
from stages.pretrain.config import PretrainConfig
from stages.pretrain.distributed import scaling_config, train_env
from stages.pretrain.loop import CHECKPOINT_MARKER, FILE_LIST, MODEL_DIR, SAVE_CHECK, TRAIN_LOG, train_worker
from stages.pretrain.plots import write_loss_curve

LOSS_PLOT = "loss_curve.png"


def registry_name(pipeline: str) -> str:
    return names.registered_model(pipeline, "lm")


def latest_checkpoint(run_dir: str | Path, world: int) -> str | None:
    """The newest complete checkpoint of an interrupted run (a local folder or an s3:// location): its marker
    readable and every rank's files there at the sizes that rank listed (a checkpoint still being copied into
    storage, or cut by a kill, is skipped)."""
    best, best_step = None, -1
    for folder in store.list_dirs(run_dir, "checkpoint_"):
        meta = _complete_checkpoint(folder)
        if meta is not None and meta["step"] > best_step and meta["world_size"] == world:
            best, best_step = folder, meta["step"]
    return best


def train_storage(ctx: StageContext) -> tuple[str, dict[str, Any]]:
    """Where a stage's Ray Train runs keep their checkpoints: ``$LMFORGE_HOME/train`` on local disk, or
    ``<storage>/train`` on object storage; and the ``RunConfig`` settings that say so."""
    if ctx.storage is None:
        root = str(lmforge_home() / "train")
        return root, {"storage_path": root}
    root = store.join(ctx.storage, "train")
    filesystem, path = store.pyarrow_filesystem(root)
    return root, {"storage_path": path, "storage_filesystem": filesystem}


def _complete_checkpoint(folder: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(store.read_bytes(store.join(folder, CHECKPOINT_MARKER)))
        lists = [json.loads(store.read_bytes(store.join(folder, FILE_LIST.format(rank=r))))
                 for r in range(meta["world_size"])]
    except (OSError, ValueError, KeyError, TypeError, store.StorageError):
        # no marker (yet): a checkpoint being written, or the name of a removed one that object storage
        # still lists for a while (SeaweedFS drops emptied folders lazily)
        return None
    for files in lists:
        for rel, size in files.items():
            path = store.join(folder, *rel.split("/"))
            try:
                if store.size(path) != size:
                    return None
            except (OSError, TypeError, store.StorageError):
                return None
    return meta


def check_batch(cfg: PretrainConfig, seq_len: int) -> None:
    """The global batch must split evenly into micro-batches on every rank."""
    if cfg.global_batch_tokens % seq_len:
        raise ConfigError(f"pretrain.global_batch_tokens ({cfg.global_batch_tokens}) must be a multiple of the "
                          f"sequence length {seq_len}")
    sequences = cfg.global_batch_tokens // seq_len
    per_step = cfg.micro_batch_size * cfg.distributed.num_workers
    if sequences % per_step:
        raise ConfigError(f"pretrain.global_batch_tokens gives {sequences} sequences per step, not a multiple of "
                          f"pretrain.micro_batch_size x distributed.num_workers = {per_step}")


class PretrainStage(Stage[PretrainConfig]):
    name = "pretrain"
    config_model = PretrainConfig
    summary = "Pretrain a Llama-style decoder on packed tokens (Ray Train, torch DDP or DeepSpeed ZeRO)."
    figures = (Figure("final_val_loss", "lower", key=True), Figure("final_perplexity", "lower", key=True),
               Figure("mean_tokens_per_s", "higher", key=True), Figure("mean_mfu", "higher", key=True),
               Figure("final_loss", "lower"), Figure("first_val_loss", "lower"),
               Figure("val_loss_minus_unigram", "lower"), Figure("save_max_abs_logit_diff", "lower"))
    model_kinds = ("lm",)
    runs_when = {"base": "pretrain"}
    dashboard = Dashboard(curves={"Pretraining: training and validation loss": ("loss", "val_loss")})
    inputs = {"tokens": "tokenize:tokens", "tokenizer": "tokenize:tokenizer"}

    def run(self, ctx: StageContext[PretrainConfig]) -> StageResult:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig
        from ray.train.torch import TorchTrainer

        from stages.tokenize.packed import PackedDataset

        cfg = ctx.config
        train_env(ctx.ray_address)
        tokens = ctx.inputs["tokens"].path
        train, val = PackedDataset(tokens, "train"), PackedDataset(tokens, "val")
        check_batch(cfg, train.seq_len)
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        dist = cfg.distributed
        run_name = f"pretrain-{ctx.cache_key[:20] or 'adhoc'}"
        # the inputs as the workers reach them: staged on object storage when nodes share no disk
        tokens_at = ctx.for_workers(Path(tokens), "tokens")
        tokenizer_at = ctx.for_workers(Path(ctx.inputs["tokenizer"].path), "tokenizer")
        train_root, where = train_storage(ctx)
        resume = latest_checkpoint(store.join(train_root, run_name), dist.num_workers)
        if resume is not None:
            ctx.log.info("pretrain: resuming from %s", resume)
        tracker = ctx.tracker
        job = {"config": cfg.model_dump(mode="json"), "tokens": tokens_at, "tokenizer": tokenizer_at,
               "seed": ctx.seed, "run_id": ctx.run_id,
               "tracking_uri": tracker.tracking_uri if tracker is not None else None,
               "resume_from": resume}
        trainer = TorchTrainer(
            train_worker, train_loop_config=job,
            scaling_config=scaling_config(dist),
            run_config=RunConfig(name=run_name, **where,
                                 failure_config=FailureConfig(max_failures=dist.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        )
        result = trainer.fit()
        if result.error:
            raise StageError(f"pretrain: training failed: {result.error}")
        out = ctx.output_dir
        with result.checkpoint.as_directory() as folder:  # local path, or downloaded from remote storage
            final = Path(folder)
            marker = json.loads((final / CHECKPOINT_MARKER).read_text())
            if not marker.get("final"):
                raise StageError(f"pretrain: the last checkpoint ({result.checkpoint.path}) is not the final model")
            shutil.copytree(final / MODEL_DIR, out / MODEL_DIR)
            shutil.copy2(final / TRAIN_LOG, out / TRAIN_LOG)
            shutil.copy2(final / SAVE_CHECK, out / SAVE_CHECK)
        history = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
        stats_path = Path(tokens) / "stats.json"
        unigram = json.loads(stats_path.read_text()).get("val_unigram_entropy_nats") if stats_path.exists() else None
        write_loss_curve(out / LOSS_PLOT, history, unigram)
        metrics, details = self._figures(cfg, history, unigram, train, val, marker, resume)
        store.remove_tree(store.join(train_root, run_name))  # finished: the model is the artifact now
        ctx.log.info("pretrain: %d steps; final loss %.4f, validation loss %.4f (perplexity %.1f) vs unigram "
                     "entropy %s", cfg.max_steps, metrics.get("final_loss", float("nan")),
                     metrics.get("final_val_loss", float("nan")), metrics.get("final_perplexity", float("nan")),
                     f"{unigram:.4f}" if unigram else "n/a")
        return StageResult(
            counts={"steps": cfg.max_steps, "train_sequences": len(train), "val_sequences": len(val)},
            metrics=metrics, details=details,
            outputs={"model": f"{MODEL_DIR}/", "train_log": TRAIN_LOG, "plot": LOSS_PLOT, "save_check": SAVE_CHECK},
        )

    @staticmethod
    def _figures(cfg, history, unigram, train, val, marker, resume) -> tuple[dict[str, float], dict[str, Any]]:
        losses = [h for h in history if "loss" in h]
        vals = [h for h in history if "val_loss" in h]
        speeds = [h["tokens_per_s"] for h in losses[1:]] or [h["tokens_per_s"] for h in losses]
        metrics: dict[str, float] = {}
        if losses:
            metrics["final_loss"] = losses[-1]["loss"]
            metrics["mean_tokens_per_s"] = sum(speeds) / len(speeds)
            mfus = [h["mfu"] for h in losses[1:] if "mfu" in h]
            if mfus:
                metrics["mean_mfu"] = sum(mfus) / len(mfus)
        if vals:
            metrics["final_val_loss"] = vals[-1]["val_loss"]
            metrics["final_perplexity"] = math.exp(min(vals[-1]["val_loss"], 50))
            metrics["first_val_loss"] = vals[0]["val_loss"]
        if unigram:
            metrics["val_unigram_entropy"] = unigram
            if vals:
                metrics["val_loss_minus_unigram"] = vals[-1]["val_loss"] - unigram
        started = [h for h in history if h.get("event") == "started"]
        saved = [h for h in history if h.get("event") == "saved"]
        if saved:
            metrics["save_max_abs_logit_diff"] = saved[-1]["max_abs_logit_diff"]
        details = {"steps": cfg.max_steps, "node_ids": started[-1]["node_ids"] if started else [],
                   "world_size": marker["world_size"], "zero_stage": marker["zero_stage"],
                   "resumed_from": str(resume) if resume else None,
                   "resumed_at_steps": [h["step"] for h in history if h.get("event") == "resumed"],
                   "train_sequences": len(train), "val_sequences": len(val), "seq_len": train.seq_len,
                   "tokens_seen": cfg.max_steps * cfg.global_batch_tokens,
                   "val_unigram_entropy_nats": unigram, **{k: v for k, v in metrics.items()}}
        return metrics, details

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        name = registry_name(pipeline_name)
        version = register_artifact(tracker, name, run_id, MODEL_DIR, names.latest_of("pretrain"))
        return {names.TAG_REGISTERED_MODEL: f"{name}/{version}"}
