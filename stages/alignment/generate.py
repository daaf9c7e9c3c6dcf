"""Batched generation with the KV cache (``model.generate``, left padding), stopping at
the chat template's end of turn (``<|end|>`` for lmforge's BPE): used by every held-out
evaluation and by PPO rollouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stages.tokenize import chat


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the stop token when one was produced
    text: str  # the response without the stop token
    stopped: bool


def load_policy(model_dir: Path, threads: int | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa", dtype="auto")
    model.eval()
    return model, tokenizer


def stop_ids(tokenizer) -> list[int]:
    return chat.stop_ids(tokenizer)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[Generation]:
    """One ``Generation`` per prompt text (already in the chat template), in order."""
    stops = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id
    out: list[Generation] = []
    generator_seed = seed
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        torch.manual_seed(generator_seed)
        generator_seed += 1
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else \
            dict(do_sample=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                             use_cache=True, **kwargs)
        width = enc["input_ids"].shape[1]
        for row, mask in zip(ids.tolist(), enc["attention_mask"].tolist()):
            prompt = [t for t, m in zip(row[:width], mask) if m]
            response = row[width:]
            stopped = False
            for k, token in enumerate(response):
                if token in stops:
                    response, stopped = response[:k + 1], True
                    break
            else:
                response = [t for t in response if t != pad]
            body = response[:-1] if stopped else response
            out.append(Generation(prompt, response, tokenizer.decode(body, skip_special_tokens=True), stopped))
    return out


def teacher_forced(tokenizer, prompts: list[str], answers: list[str]) -> list[Generation]:
    """Given (prompt, answer) texts in the chat template as ``Generation``s, so that scoring
    and log-prob code written for sampled answers takes them as they are."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    return [Generation(p, a, text, True) for p, a, text in zip(prompt_ids, answer_ids, answers)]
