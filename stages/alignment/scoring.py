"""Reward-model scores of (prompt, response) token sequences: the scalar head read at
each row's last real token (right padding), in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_reward_model(model_dir: Path, threads: int | None = None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation="sdpa",
                                                               dtype="auto")
    model.eval()
    return model, tokenizer


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    out = np.zeros(len(sequences), dtype=np.float64)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, s in enumerate(chunk):
            ids[k, :len(s)], mask[k, :len(s)] = torch.tensor(s), 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        out[start:start + len(chunk)] = logits.squeeze(-1).float().cpu().numpy()
    return out


def score_texts(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64) -> np.ndarray:
    p = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return score_ids(model, [a + b for a, b in zip(p, r)], tokenizer.pad_token_id, batch_size)
