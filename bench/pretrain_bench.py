"""Training throughput: the pretrain stage (Ray Train + DeepSpeed ZeRO, one worker on all
cores) against a bare single-process PyTorch loop with the same model, batches, optimizer,
accumulation and threads, in the same run, alternating. Prints tokens/s, the ratio, MFU.

Usage: .venv/bin/python bench/pretrain_bench.py --tokens TOKENIZE_OUT [--steps 15] [--repeats 2]
         [--set pretrain.model.preset=cpu-tiny ...]
(TOKENIZE_OUT is a tokenize stage output folder: tokens/ and tokenizer/)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.configuration import apply_overrides, validate
from stages.core.ray_runtime import stop_ray
from stages.core.runner import execute_stage, input_from_path
from stages.pretrain.config import PretrainConfig
from stages.pretrain.stage import PretrainStage


def bare_loop(cfg: PretrainConfig, tokens: Path, steps: int, seed: int) -> float:
    """tokens/s of plain PyTorch: no Ray, no DeepSpeed, same work per step."""
    import torch

    from stages.pretrain.loop import make_optimizer
    from stages.pretrain.model import build_model
    from stages.pretrain.sampler import StepSampler
    from stages.tokenize.packed import PackedDataset

    torch.set_num_threads(max(1, int(cfg.distributed.cpus_per_worker)))
    train = PackedDataset(tokens, "train")
    global_batch = cfg.global_batch_tokens // train.seq_len
    micro = cfg.micro_batch_size
    accum = global_batch // micro
    model = build_model(cfg.model, train.vocab_size, train.seq_len, train.pad_id, train.header.eos_id, seed)
    opt, sched = make_optimizer(model, cfg.optim, steps)
    sampler = StepSampler(len(train), global_batch, seed)
    model.train()
    started = None
    for step in range(steps):
        if step == 1:
            started = time.perf_counter()  # the first step pays one-off costs, as in the stage's figure
        indices = sampler.rank_indices(step, 0, 1)
        for m in range(accum):
            b = train.batch(indices[m * micro:(m + 1) * micro])
            kwargs = {"input_ids": torch.from_numpy(b["input_ids"]), "labels": torch.from_numpy(b["labels"])}
            if cfg.document_mask:
                kwargs["position_ids"] = torch.from_numpy(b["position_ids"])
            (model(**kwargs).loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (steps - 1) * cfg.global_batch_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    data = apply_overrides({"pretrain": {"max_steps": args.steps, "log_every": 1, "eval_every": 10**6,
                                         "checkpoint_every": 10**6, "eval_sequences": 8}}, args.overrides)
    cfg: PretrainConfig = validate(PretrainConfig, data["pretrain"], prefix="pretrain")  # type: ignore[assignment]
    work = Path(tempfile.mkdtemp(prefix="pretrainbench-"))
    os.environ["LMFORGE_HOME"] = str(work / "home")
    inputs = {"tokens": input_from_path("tokens", args.tokens / "tokens"),
              "tokenizer": input_from_path("tokenizer", args.tokens / "tokenizer")}
    rows = []
    for r in range(args.repeats):
        bare = bare_loop(cfg, args.tokens / "tokens", args.steps, seed=r)
        run = execute_stage(PretrainStage(), cfg, dict(inputs), work / f"out{r}", seed=r)
        stop_ray()  # the baseline must not share the cores with an idle Ray cluster
        history = [json.loads(x) for x in (work / f"out{r}" / "train_log.jsonl").read_text().splitlines()]
        steady = [h for h in history if "tokens_per_s" in h and h["step"] > 1]
        stage_tps = sum(h["tokens_per_s"] for h in steady) / len(steady)
        mfu = sum(h.get("mfu", 0) for h in steady) / len(steady)
        rows.append({"bare_tokens_per_s": round(bare), "stage_tokens_per_s": round(stage_tps),
                     "ratio": round(stage_tps / bare, 3), "stage_mfu": round(mfu, 3),
                     "stage_wall_s": run.manifest["duration_s"]})
        print(json.dumps(rows[-1]), flush=True)
    params = json.loads((work / "out0" / "model" / "config.json").read_text())
    print(json.dumps({"model": cfg.model.preset, "hidden_size": params["hidden_size"],
                      "layers": params["num_hidden_layers"], "global_batch_tokens": cfg.global_batch_tokens,
                      "steps": args.steps, "runs": rows,
                      "median_ratio": sorted(r["ratio"] for r in rows)[len(rows) // 2]}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
