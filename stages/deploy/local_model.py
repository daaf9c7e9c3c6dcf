"""A registered model folder loaded into transformers in this process: what ``lmforge generate``
answers with when no server is wanted (vLLM's ~30 s engine start is not worth one answer)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_model(model_dir: Path, threads: int | None = None):
    """A registered model folder: a transformers checkpoint, quantized (torchao) or not."""
    from stages.alignment.generate import load_policy

    model, tokenizer = load_policy(Path(model_dir), threads)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


@torch.no_grad()
def complete(model, tokenizer, prompt_ids: list[int], max_tokens: int, temperature: float,
             seed: int | None) -> tuple[str, str, int]:
    """(text, finish reason, completion tokens) of one completion: greedy at temperature 0, else sampled."""
    from stages.alignment.generate import stop_ids

    stops = stop_ids(tokenizer)
    ids = torch.tensor([prompt_ids], device=model.device)
    sample = temperature > 0
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_p=None, top_k=None,
                         eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(prompt_ids):].tolist()
    finish = "stop" if new and new[-1] in stops else "length"
    if finish == "stop":
        new = new[:-1]
    return tokenizer.decode(new, skip_special_tokens=True), finish, len(new) + (finish == "stop")
