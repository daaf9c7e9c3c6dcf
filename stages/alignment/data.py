"""align_data's JSONL rows as token tensors: SFT examples with the prompt masked, and
preference pairs (chosen and rejected share one prompt).

Nothing adds special tokens here: the chat template in ``prompt_text`` and the
``<|end|>`` closing ``response_text`` are the whole format, the same at training and at
generation time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE = -100


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass
class SFTItem:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens: the loss is on the response only
    lengths: list[int] | None = None  # packed: the examples' lengths, back to back


@dataclass
class PairItem:
    prompt_len: int
    chosen: list[int]  # prompt + chosen response
    rejected: list[int]  # prompt + rejected response


def encode_sft(rows: list[dict], tokenizer, max_len: int) -> list[SFTItem]:
    prompts = tokenizer([r["prompt_text"] for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r["response_text"] for r in rows], add_special_tokens=False)["input_ids"]
    items = []
    for p, r in zip(prompts, responses):
        ids = (p + r)[:max_len]
        labels = ([IGNORE] * len(p) + r)[:max_len]
        items.append(SFTItem(ids, labels))
    return items


def encode_pairs(rows: list[dict], tokenizer, max_len: int) -> list[PairItem]:
    prompts = tokenizer([r["prompt_text"] for r in rows], add_special_tokens=False)["input_ids"]
    chosen = tokenizer([r["response_text"] for r in rows], add_special_tokens=False)["input_ids"]
    rejected = tokenizer([r["rejected_text"] for r in rows], add_special_tokens=False)["input_ids"]
    return [PairItem(len(p), (p + c)[:max_len], (p + r)[:max_len]) for p, c, r in zip(prompts, chosen, rejected)]


def pack_sft(items: list[SFTItem], max_len: int) -> list[SFTItem]:
    """Greedy packing in order: examples back to back up to ``max_len``; positions restart
    per example (``lengths``), so attention stays inside each one."""
    packed: list[SFTItem] = []
    ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    for item in items:
        if ids and len(ids) + len(item.input_ids) > max_len:
            packed.append(SFTItem(ids, labels, lengths))
            ids, labels, lengths = [], [], []
        ids = ids + item.input_ids
        labels = labels + item.labels
        lengths = lengths + [len(item.input_ids)]
    if ids:
        packed.append(SFTItem(ids, labels, lengths))
    return packed


def sft_batch(items: list[SFTItem], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded ``input_ids``, ``labels`` and ``attention_mask``; packed rows get
    ``position_ids`` restarting per example instead, which transformers turns into a
    per-example causal mask (the same mechanism as pretraining's document mask)."""
    width = max(len(i.input_ids) for i in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    labels = np.full((len(items), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for k, item in enumerate(items):
        n = len(item.input_ids)
        ids[k, :n], labels[k, :n], mask[k, :n] = item.input_ids, item.labels, 1
    out = {"input_ids": ids, "labels": labels}
    if any(item.lengths for item in items):
        pos = np.zeros_like(ids)
        for k, item in enumerate(items):
            spans = (item.lengths or [len(item.input_ids)]) + [width - len(item.input_ids)]  # padding: its own span
            pos[k] = np.concatenate([np.arange(n) for n in spans if n > 0])
        out["position_ids"] = pos
    else:
        out["attention_mask"] = mask
    return out


def pair_batch(items: list[PairItem], pad_id: int) -> dict[str, np.ndarray]:
    """Chosen rows then rejected rows, right-padded, with response-token masks for log-probs."""
    seqs = [i.chosen for i in items] + [i.rejected for i in items]
    starts = [i.prompt_len for i in items] * 2
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    response = np.zeros((len(seqs), width), dtype=np.float32)
    for k, (s, start) in enumerate(zip(seqs, starts)):
        ids[k, :len(s)], mask[k, :len(s)] = s, 1
        response[k, start:len(s)] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response}
