"""Rollout throughput: batched KV-cache generation (``model.generate`` on a left-padded
batch, what PPO's policy actor runs) against generating the same prompts one at a time,
and against a batch without the KV cache, in the same process. Every answer is forced
to ``--new-tokens`` tokens (``min_new_tokens``) so all variants do the same work.

Usage: .venv/bin/python bench/rollout_bench.py --model SFT_MODEL_DIR --prompts SFT_HELDOUT.jsonl
       [--batch 16] [--new-tokens 24] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from stages.alignment.data import read_rows
from stages.alignment.generate import load_policy, stop_ids


@torch.no_grad()
def timed(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, use_cache: bool) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start:start + batch], add_special_tokens=False, padding=True, return_tensors="pt")
        torch.manual_seed(start)
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                             temperature=1.0, top_k=0, eos_token_id=stop_ids(tokenizer),
                             pad_token_id=tokenizer.pad_token_id, use_cache=use_cache)
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True, help="align_data's sft_heldout.jsonl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (PPO's policy actor uses 1)")
    args = parser.parse_args()

    model, tokenizer = load_policy(args.model, args.threads)
    prompts = [r["prompt_text"] for r in read_rows(args.prompts)][:args.num_prompts]
    variants = {f"batched_kv_b{args.batch}": (args.batch, True), "one_at_a_time_kv": (1, True),
                f"batched_no_cache_b{args.batch}": (args.batch, False)}
    timed(model, tokenizer, prompts[:args.batch], args.batch, 4, True)  # warm-up
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (batch, cache) in variants.items():
            seconds, tokens = timed(model, tokenizer, prompts, batch, args.new_tokens, cache)
            results[name].append(tokens / seconds)
    best = {name: max(v) for name, v in results.items()}
    base = best["one_at_a_time_kv"]
    for name, speeds in results.items():
        print(f"{name:28s} " + " ".join(f"{s:8.0f}" for s in speeds) + f"  tokens/s  best {best[name]:8.0f}  "
              f"= {best[name] / base:5.2f}x one-at-a-time")
    print(json.dumps({"prompts": len(prompts), "new_tokens": args.new_tokens, "threads": args.threads,
                      "tokens_per_s": best, "ratio_vs_one_at_a_time": {k: v / base for k, v in best.items()}}))


if __name__ == "__main__":
    main()
