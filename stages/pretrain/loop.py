"""The training loop every Ray Train worker runs: one function, CPU or GPU, 1 or N ranks.

Read top to bottom like nanoGPT: set up (threads, device, data, model, DeepSpeed),
maybe resume, then steps of gradient accumulation with evaluation, logging and
checkpoints. DeepSpeed owns the optimizer step, ZeRO partitioning, gradient clipping
and accumulation; Ray Train owns the process group, placement, restarts and the
checkpoint storage. The step counter is the whole data position (see ``sampler``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKPOINT_MARKER = "lmforge_checkpoint.json"
FILE_LIST = "lmforge_files_rank{rank}.json"  # each rank's files and sizes, written last


def write_file_list(folder: Path, rank: int) -> None:
    """What this rank put into its checkpoint folder, with sizes: Ray Train copies the folder into storage file by
    file, with no rename at the end, so a reader knows a copy is whole only by finding every file at its size."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / FILE_LIST.format(rank=rank)).write_text(json.dumps(files))
SAVE_CHECK = "save_check.npz"
TRAIN_LOG = "train_log.jsonl"
MODEL_DIR = "model"


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total`` steps."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model, optim, max_steps: int):
    """AdamW (no weight decay on norms and biases) with warmup + cosine: the same for the
    stage and for the bare-loop baseline in bench/pretrain_bench.py."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]  # a LoRA model's frozen base stays out
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],  # LoRA trains matrices only: DeepSpeed drops an empty group
        lr=optim.lr, betas=(optim.beta1, optim.beta2), fused=False, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim.warmup_steps, max_steps,
                                                                       optim.min_lr_ratio))
    return optimizer, scheduler


def deepspeed_config(cfg, micro: int, accum: int, bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.distributed.zero_stage}
    if cfg.distributed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.distributed.offload_optimizer and cfg.distributed.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class StepLogger:
    """Rank 0's record of the run: a list of dicts (kept in checkpoints) mirrored to MLflow."""

    def __init__(self, rank: int, run_id: str | None, tracking_uri: str | None, history: list[dict]):
        self.rank = rank
        self.history = history
        self.client = None
        self.run_id = run_id
        if rank == 0 and run_id and tracking_uri:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        self.history.append({"step": step, **metrics})
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and math.isfinite(v)]
            self.client.log_batch(self.run_id, metrics=items)

    def event(self, step: int, event: str, **extra: Any) -> None:
        if self.rank == 0:
            self.history.append({"step": step, "event": event, **extra})


def save_check(model_dir: Path, probe: dict, live, path: Path) -> float:
    """Reload the saved folder with ``from_pretrained`` and compare its logits to the live engine's."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", attn_implementation="sdpa")
    reloaded.eval()
    cpu = {k: v.cpu() for k, v in probe.items()}
    with torch.no_grad():
        logits = reloaded(**cpu).logits.float().numpy()
    np.savez(path, input_ids=cpu["input_ids"].numpy(),
             position_ids=cpu.get("position_ids", torch.empty(0)).numpy(), live_logits=live)
    return float(np.abs(logits - live).max())


def checkpoint_at(location: str):
    """A Ray Train checkpoint at a local folder or an s3:// location."""
    from ray.train import Checkpoint

    from stages.core import storage

    if not storage.is_remote(location):
        return Checkpoint.from_directory(location)
    filesystem, path = storage.pyarrow_filesystem(location)
    return Checkpoint(path=path, filesystem=filesystem)


def train_worker(job: dict[str, Any]) -> None:
    from stages.core.ray_runtime import worker_stdout_to_stderr

    worker_stdout_to_stderr()
    import deepspeed
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from stages.core import storage
    from stages.pretrain.config import PretrainConfig
    from stages.pretrain.model import build_model, count_parameters, flops_per_token
    from stages.pretrain.peak import peak_tflops
    from stages.pretrain.sampler import StepSampler, eval_indices
    from stages.tokenize.packed import PackedDataset

    cfg = PretrainConfig.model_validate(job["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = max(1, int(cfg.distributed.cpus_per_worker))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    bf16 = cfg.distributed.precision == "bf16" or (cfg.distributed.precision == "auto" and on_gpu)

    # data: the same global batch for any world size; this rank reads its share (fetched first when the
    # inputs are on object storage: this node may share no disk with the driver)
    tokens, tokenizer = storage.fetched(job["tokens"]), storage.fetched(job["tokenizer"])
    train = PackedDataset(tokens, "train")
    val = PackedDataset(tokens, "val")
    seq_len = train.seq_len
    global_batch = cfg.global_batch_tokens // seq_len
    micro = cfg.micro_batch_size
    accum = global_batch // (micro * world)
    sampler = StepSampler(len(train), global_batch, job["seed"])

    model = build_model(cfg.model, train.vocab_size, seq_len, train.pad_id, train.header.eos_id, job["seed"])
    n_params = count_parameters(model)
    dims = cfg.model.dims()
    flops_token = flops_per_token(n_params, dims["num_layers"], dims["hidden_size"], seq_len)
    optimizer, scheduler = make_optimizer(model, cfg.optim, cfg.max_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, micro, accum, bf16))

    # resume: the step counter, optimizer/scheduler state and the history come back
    step, history = 0, []
    # Ray's own latest checkpoint (after a worker restart), else the one the driver found on disk
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and job.get("resume_from"):
        checkpoint = checkpoint_at(job["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            marker = json.loads((Path(folder) / CHECKPOINT_MARKER).read_text())
            if marker["world_size"] != world or marker["zero_stage"] != cfg.distributed.zero_stage:
                raise RuntimeError(f"checkpoint at step {marker['step']} was written by {marker['world_size']} "
                                   f"workers with ZeRO-{marker['zero_stage']}; this run has {world} with "
                                   f"ZeRO-{cfg.distributed.zero_stage}")
            _, client = engine.load_checkpoint(folder, tag=marker["tag"])
        step, history = client["step"], client["history"]
        torch.set_rng_state(client["rng_cpu"])
        np.random.set_state(client["rng_numpy"])
    logger = StepLogger(rank, job.get("run_id"), job.get("tracking_uri"), history)
    if step:
        logger.event(step, "resumed", from_step=step)
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:
        dist.all_gather_object(nodes, nodes[0])
    logger.event(step, "started", world_size=world, node_ids=nodes, device=device.type)
    peak, peak_source = peak_tflops(str(device), cfg.peak_tflops) if rank == 0 else (0.0, "")
    if rank == 0:
        print(f"pretrain: {n_params / 1e6:.2f}M parameters, {world} worker(s) on {device.type}, ZeRO-"
              f"{cfg.distributed.zero_stage}, {'bf16' if bf16 else 'fp32'}, global batch {global_batch} x "
              f"{seq_len} tokens (micro {micro} x accum {accum} x {world}); {len(train)} train / {len(val)} val "
              f"sequences; peak {peak:.3f} TFLOP/s per worker ({peak_source}); starting at step {step}",
              file=sys.stderr, flush=True)

    def to_device(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {"input_ids": torch.from_numpy(batch["input_ids"]).to(device),
               "labels": torch.from_numpy(batch["labels"]).to(device)}
        if cfg.document_mask:  # transformers turns reset position ids into a per-document causal mask
            out["position_ids"] = torch.from_numpy(batch["position_ids"]).to(device)
        return out

    def mean_across_ranks(value: torch.Tensor) -> float:
        value = value.detach().float().to(device)
        if world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= world
        return float(value)

    def evaluate() -> float:
        """Validation loss over equal shares on every rank, logged at the current step."""
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for indices in eval_indices(len(val), cfg.eval_sequences, rank, world, micro):
                batch = to_device(val.batch(indices))
                loss = engine(**batch).loss
                tokens = (batch["labels"][:, 1:] != -100).sum()
                total += torch.stack([loss.double() * tokens, tokens.double()])
        if world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        engine.train()
        val_loss = float(total[0] / total[1])
        logger.log(step, {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50))})
        if rank == 0:
            print(f"pretrain: step {step} val_loss {val_loss:.4f} perplexity {math.exp(min(val_loss, 50)):.1f}",
                  file=sys.stderr, flush=True)
        return val_loss

    def save(final: bool) -> None:
        state = None
        if final and cfg.distributed.zero_stage == 3:
            state = engine._zero3_consolidated_16bit_state_dict()  # collective: gathers the shards on rank 0
        with tempfile.TemporaryDirectory() as folder:
            tag = f"step{step:07d}"
            client = {"step": step, "history": logger.history, "rng_cpu": torch.get_rng_state(),
                      "rng_numpy": np.random.get_state()}
            engine.save_checkpoint(folder, tag=tag, client_state=client)
            if final:
                probe = to_device(val.batch(eval_indices(len(val), micro, 0, 1, micro)[0]))
                probe.pop("labels")
                engine.eval()
                with torch.no_grad():
                    live = engine(**probe).logits.float().cpu().numpy()  # collective under ZeRO-3
                engine.train()
            if rank == 0:
                if final:
                    module = engine.module
                    if state is None:
                        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                    model_dir = Path(folder) / MODEL_DIR
                    module.save_pretrained(str(model_dir), state_dict=state, safe_serialization=True)
                    for item in tokenizer.iterdir():
                        if item.is_file():
                            shutil.copy2(item, model_dir / item.name)
                    diff = save_check(model_dir, probe, live, Path(folder) / SAVE_CHECK)
                    logger.event(step, "saved", max_abs_logit_diff=diff)
                    print(f"pretrain: saved model reloads with max |logit diff| {diff:.3g}", file=sys.stderr, flush=True)
                (Path(folder) / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in logger.history))
                (Path(folder) / CHECKPOINT_MARKER).write_text(json.dumps(
                    {"step": step, "tag": tag, "world_size": world, "zero_stage": cfg.distributed.zero_stage,
                     "final": final}))
            write_file_list(Path(folder), rank)
            losses = [h["loss"] for h in logger.history if "loss" in h]
            ray.train.report({"step": step, "loss": losses[-1] if losses else float("nan")},
                             checkpoint=Checkpoint.from_directory(folder))

    engine.train()
    window_start, window_steps = time.time(), 0
    evaluated_at_end = False  # the same on every rank: evaluation is a collective under ZeRO-3
    while step < cfg.max_steps:
        indices = sampler.rank_indices(step, rank, world)
        losses = []
        for m in range(accum):
            batch = to_device(train.batch(indices[m * micro:(m + 1) * micro]))
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        step += 1
        window_steps += 1
        loss_value = mean_across_ranks(torch.stack(losses).mean())
        last_step = step == cfg.max_steps
        if step % cfg.log_every == 0 or step == 1 or last_step:
            elapsed = time.time() - window_start
            tokens_per_s = window_steps * global_batch * seq_len / max(elapsed, 1e-9)
            grad_norm = engine.get_global_grad_norm()
            metrics = {"loss": loss_value, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
                       "epoch": sampler.epoch_of(step), "tokens_seen": step * global_batch * seq_len}
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            if rank == 0 and peak:
                metrics["mfu"] = tokens_per_s * flops_token / (peak * 1e12 * world)
            logger.log(step, metrics)
            if rank == 0:
                print(f"pretrain: step {step}/{cfg.max_steps} loss {loss_value:.4f} lr {metrics['lr']:.2e} "
                      f"{tokens_per_s:,.0f} tok/s" + (f" mfu {metrics['mfu']:.3f}" if "mfu" in metrics else ""),
                      file=sys.stderr, flush=True)
            window_start, window_steps = time.time(), 0
        if step % cfg.eval_every == 0 or last_step:
            evaluated_at_end = last_step
            evaluate()
            window_start = time.time()
        if step % cfg.checkpoint_every == 0 and not last_step:
            save(final=False)
            window_start = time.time()
    if not evaluated_at_end:
        evaluate()  # resumed at the very end: still report the final figures
    save(final=True)
