"""The loop every SFT / reward / DPO Ray Train worker runs; pretraining's distribution code
(DeepSpeed ZeRO, the step sampler, the optimizer builder, the step logger) with a
recipe deciding model class, batches and loss.

With ``checkpoint_every`` set, a run saves its state (weights or LoRA adapter, optimizer,
scheduler, RNG, step, history, precomputed reference log-probs) every N steps into Ray Train's
storage; a worker restart (``distributed.max_failures``) or the same stage run again after a kill
resumes from the newest complete one, on the same curve. Without it, a killed run leaves nothing
behind (the runner's work dir is atomic) and reruns from its input model.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEL_DIR = "model"
TRAIN_LOG = "train_log.jsonl"
MARKER = "lmforge_checkpoint.json"


def copy_tokenizer_files(source: Path, dest: Path) -> None:
    """The tokenizer and chat template travel with every saved model folder."""
    for item in source.iterdir():
        if item.is_file() and ("token" in item.name or item.name == "chat_template.jinja"):
            shutil.copy2(item, dest / item.name)


def load_model(model_dir: str, kind: str, pad_id: int):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "score":
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, pad_token_id=pad_id, attn_implementation="sdpa", dtype="float32")
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype="float32")


def train_worker(job: dict[str, Any]) -> None:
    from stages.core.ray_runtime import worker_stdout_to_stderr

    worker_stdout_to_stderr()
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint
    from transformers import AutoTokenizer

    from stages.alignment import lora
    from stages.alignment.data import read_rows
    from stages.alignment.recipes import RECIPES
    from stages.alignment.weight_average import WeightAverage
    from stages.core import storage
    from stages.pretrain.loop import StepLogger, checkpoint_at, deepspeed_config, make_optimizer, write_file_list
    from stages.pretrain.sampler import StepSampler, eval_indices

    stage = job["stage"]
    cfg = job["config_model"].model_validate(job["config"])
    recipe = RECIPES[stage](cfg)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.distributed.cpus_per_worker)))
    torch.manual_seed(job["seed"])
    device = ray.train.torch.get_device()
    bf16 = cfg.distributed.precision == "bf16" or (cfg.distributed.precision == "auto" and device.type == "cuda")

    # the driver's model and rows: fetched first when they are on object storage (this node may share no disk)
    model_dir = storage.fetched(job["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id
    train_items = recipe.encode(read_rows(storage.fetched(job["train"])), tokenizer, train=True)
    eval_items = recipe.encode(read_rows(storage.fetched(job["heldout"])), tokenizer, train=False)
    micro, global_batch = cfg.micro_batch_size, cfg.global_batch_size
    accum = global_batch // (micro * world)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_items) / global_batch))
    sampler = StepSampler(len(train_items), global_batch, job["seed"])

    model = load_model(str(model_dir), recipe.model_kind, pad_id).to(device)
    if cfg.lora is not None:
        model = lora.wrap(model, cfg.lora, recipe.model_kind)
    trained, total = lora.trainable(model)
    extra_train = recipe.prepare(model, train_items, device, micro)
    extra_eval = recipe.prepare(model, eval_items, device, micro)
    optimizer, scheduler = make_optimizer(model, cfg.optim, steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, micro, accum, bf16))
    average = WeightAverage(engine.module, cfg.ema_decay) if cfg.ema_decay else None
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()  # Ray's own after a worker restart, else the one the driver found
    if checkpoint is None and job.get("resume_from"):
        checkpoint = checkpoint_at(job["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            marker = json.loads((Path(folder) / MARKER).read_text())
            if marker["world_size"] != world:
                raise RuntimeError(f"checkpoint at step {marker['step']} was written by {marker['world_size']} workers; "
                                   f"this run has {world}")
            _, client = engine.load_checkpoint(folder, tag=marker["tag"])
        start, history = client["step"], client["history"]
        torch.set_rng_state(client["rng_cpu"])
        extra_train, extra_eval = client["extra_train"], client["extra_eval"]  # the reference from before training
        if average is not None:
            average.shadow = client["average"]
    logger = StepLogger(rank, job.get("run_id"), job.get("tracking_uri"), history)
    if start:
        logger.event(start, "resumed", from_step=start)
    if rank == 0:
        print(f"{stage}: {len(train_items)} train / {len(eval_items)} held-out items, {steps} steps of {global_batch} "
              f"(micro {micro} x accum {accum} x {world} worker(s) on {device.type}), ZeRO-"
              f"{cfg.distributed.zero_stage}; training {trained:,} of {total:,} parameters"
              f"{' (LoRA r=%d)' % cfg.lora.r if cfg.lora else ''}", file=sys.stderr, flush=True)
        if not start:
            logger.log(0, {"trainable_parameters": float(trained), "parameters": float(total)})

    def reduce(sums: torch.Tensor) -> torch.Tensor:
        sums = sums.to(device)
        if world > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return sums

    def weighted(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Metrics averaged over micro-batches and ranks, weighted by tokens (SFT) or pairs."""
        names = sorted(k for k in parts[0] if k != "weight")
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        for p in parts:
            w = p["weight"].double().cpu()
            sums[:-1] += torch.stack([p[k].double().cpu() for k in names]) * w
            sums[-1] += w
        sums = reduce(sums)
        return {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)}

    def evaluate(step: int, prefix: str = "heldout_") -> None:
        engine.eval()
        parts = []
        with torch.no_grad():
            for idx in eval_indices(len(eval_items), len(eval_items), rank, world, micro):
                parts.append(recipe.loss(engine, eval_items, idx.tolist(), pad_id, device, extra_eval)[1])
        engine.train()
        figures = {f"{prefix}{k}": v for k, v in weighted(parts).items()}
        logger.log(step, figures)
        if rank == 0:
            print(f"{stage}: step {step} " + " ".join(f"{k} {v:.4f}" for k, v in figures.items()),
                  file=sys.stderr, flush=True)

    def save_state(step: int) -> None:
        """A resumable checkpoint (not the final model): every rank writes its part, rank 0 the marker."""
        with tempfile.TemporaryDirectory() as folder:
            tag = f"step{step:07d}"
            client = {"step": step, "history": logger.history, "rng_cpu": torch.get_rng_state(),
                      "extra_train": extra_train, "extra_eval": extra_eval,
                      "average": average.shadow if average is not None else None}
            engine.save_checkpoint(folder, tag=tag, client_state=client)
            if rank == 0:
                (Path(folder) / MARKER).write_text(json.dumps({"step": step, "tag": tag, "world_size": world,
                                                               "final": False}))
            write_file_list(Path(folder), rank)
            ray.train.report({"step": step}, checkpoint=Checkpoint.from_directory(folder))

    engine.train()
    if not start:
        evaluate(0)
    for step in range(start + 1, steps + 1):
        indices = sampler.rank_indices(step - 1, rank, world).tolist()
        parts = []
        for m in range(accum):
            loss, figures = recipe.loss(engine, train_items, indices[m * micro:(m + 1) * micro], pad_id, device,
                                        extra_train)
            engine.backward(loss)
            engine.step()
            parts.append(figures)
        if average is not None:
            average.update(engine.module)
        if step % cfg.log_every == 0 or step in (1, steps):
            figures = weighted(parts)
            figures["lr"] = scheduler.get_last_lr()[0]
            figures["epoch"] = sampler.epoch_of(step)
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                figures["grad_norm"] = float(grad_norm)
            logger.log(step, figures)
            if rank == 0:
                print(f"{stage}: step {step}/{steps} " + " ".join(f"{k} {v:.4g}" for k, v in figures.items()),
                      file=sys.stderr, flush=True)
        if step % cfg.eval_every == 0 and step != steps:
            evaluate(step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != steps:
            save_state(step)
    if average is not None:  # the last weights' figures beside those of the average that is saved
        evaluate(steps, prefix="heldout_unaveraged_")
        average.copy_to(engine.module)
    evaluate(steps)

    state = engine._zero3_consolidated_16bit_state_dict() if cfg.distributed.zero_stage == 3 else None
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            module = engine.module
            if lora.is_adapted(module):  # the adapter as trained, then the model with it merged in
                module.save_pretrained(str(Path(folder) / lora.ADAPTER_DIR))
                module = lora.merged(module)
            if state is None:
                state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            out = Path(folder) / MODEL_DIR
            module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            copy_tokenizer_files(model_dir, out)
            (Path(folder) / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in logger.history))
            (Path(folder) / MARKER).write_text(json.dumps({"step": steps, "final": True, "world_size": world}))
        write_file_list(Path(folder), rank)
        ray.train.report({"step": steps}, checkpoint=Checkpoint.from_directory(folder))
