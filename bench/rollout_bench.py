"""Rollout throughput of PPO's policy actor: vLLM in-process (``ppo.rollout_engine: vllm``,
``stages/ppo/vllm_rollouts.py``) against transformers' batched KV-cache ``generate`` on a
left-padded batch (``rollout_engine: hf``), against the same prompts one at a time, and
against a batch without the KV cache, in the same process with the same torch threads.
Every answer is forced to ``--new-tokens`` tokens (``min_new_tokens`` / vLLM's
``ignore_eos``) so all variants do the same work.

Usage: .venv/bin/python bench/rollout_bench.py --model SFT_MODEL_DIR --prompts SFT_HELDOUT.jsonl
       [--batch 16] [--new-tokens 24] [--repeats 3] [--threads 1] [--variants vllm hf_batched ...]
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
        enc = tokenizer(prompts[start:start + batch], add_special_tokens=False, padding=True,
                        return_tensors="pt").to(model.device)
        torch.manual_seed(start)
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                             temperature=1.0, top_k=0, eos_token_id=stop_ids(tokenizer),
                             pad_token_id=tokenizer.pad_token_id, use_cache=use_cache)
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return time.perf_counter() - started, tokens


def timed_vllm(rollouts, tokenizer, prompts: list[str], batch: int, new_tokens: int) -> tuple[float, int]:
    """The same batches through vLLM, as the policy actor sends them (one ``generate`` call per batch)."""
    from vllm import SamplingParams

    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), batch):
        ids = tokenizer(prompts[start:start + batch], add_special_tokens=False)["input_ids"]
        params = [SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=1.0,
                                 seed=start + i) for i in range(len(ids))]
        outputs = rollouts.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
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
    parser.add_argument("--variants", nargs="+", default=["vllm", "hf_batched", "hf_one_at_a_time", "hf_no_cache"],
                        choices=["vllm", "hf_batched", "hf_one_at_a_time", "hf_no_cache"])
    args = parser.parse_args()

    model, tokenizer = load_policy(args.model, args.threads)
    if torch.cuda.is_available():  # what the policy actor does on a GPU: bf16 on the card
        model = model.to("cuda", torch.bfloat16)
    prompts = [r["prompt_text"] for r in read_rows(args.prompts)][:args.num_prompts]
    hf = {"hf_batched": (args.batch, True), "hf_one_at_a_time": (1, True), "hf_no_cache": (args.batch, False)}
    runners = {}
    for name in args.variants:
        if name == "vllm":
            from stages.ppo.vllm_rollouts import VLLMRollouts

            rollouts = VLLMRollouts(args.model, tokenizer, seed=0)
            torch.set_num_threads(args.threads)  # the actor's share, whatever vLLM set while loading
            runners[name] = lambda r=rollouts: timed_vllm(r, tokenizer, prompts, args.batch, args.new_tokens)
        else:
            batch, cache = hf[name]
            runners[name] = lambda b=batch, c=cache: timed(model, tokenizer, prompts, b, args.new_tokens, c)
    timed(model, tokenizer, prompts[:args.batch], args.batch, 4, True)  # warm-up
    if "vllm" in runners:
        timed_vllm(rollouts, tokenizer, prompts[:args.batch], args.batch, 4)
    results: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            seconds, tokens = run()
            results[name].append(tokens / seconds)
    best = {name: max(v) for name, v in results.items()}
    base_name = "hf_batched" if "hf_batched" in best else next(iter(best))
    base = best[base_name]
    for name, speeds in results.items():
        print(f"{name:28s} " + " ".join(f"{s:8.0f}" for s in speeds) + f"  tokens/s  best {best[name]:8.0f}  "
              f"= {best[name] / base:5.2f}x {base_name}")
    print(json.dumps({"model": str(args.model), "prompts": len(prompts), "batch": args.batch,
                      "new_tokens": args.new_tokens, "threads": args.threads, "tokens_per_s": best,
                      f"ratio_vs_{base_name}": {k: v / base for k, v in best.items()}}))


if __name__ == "__main__":
    main()
