"""The generation engine behind the server: one KV-cache decoding loop over a batch of
requests that each keep their own sampling settings (temperature, top_p, seed, max
tokens, stop strings, ignore_eos), yielding text deltas step by step so the same loop
serves streaming and non-streaming requests.

``model.generate`` takes one sampling config per batch; a server batching unrelated
requests needs one per row, hence this loop (prefill once, then one token per row per
step with the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class Delta:
    """What one row produced this step: new text, and why it ended (None while running)."""

    text: str
    finish_reason: str | None
    completion_tokens: int


def load_model(model_dir: Path, threads: int | None = None):
    """A registered model folder: a quantize-stage variant or a transformers checkpoint."""
    from transformers import AutoTokenizer

    from stages.alignment.generate import load_policy
    from stages.quantize.storage import WEIGHTS, load_quantized

    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS).exists():
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_quantized(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    else:
        model, tokenizer = load_policy(model_dir, threads)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


class Engine:
    def __init__(self, model, tokenizer, stop_token_ids: list[int]):
        self.model, self.tokenizer = model, tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _sample(self, logits: torch.Tensor, request: GenRequest, generator: torch.Generator | None) -> int:
        if request.temperature <= 0 or generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / request.temperature, dim=-1)
        if request.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < request.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    @torch.no_grad()
    def stream(self, requests: list[GenRequest]) -> Iterator[list[Delta | None]]:
        """Per step, one entry per request: a ``Delta`` while it runs or as it ends, then None."""
        device = next(self.model.parameters()).device
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for k, r in enumerate(requests):  # left padding: every row's next token is at the same column
            ids[k, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[k, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        generators = []
        for r in requests:
            if r.temperature > 0:
                g = torch.Generator(device="cpu")
                g.manual_seed(r.seed if r.seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
                generators.append(g)
            else:
                generators.append(None)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :].cpu()
        tokens: list[list[int]] = [[] for _ in requests]
        sent = [""] * len(requests)
        done = [False] * len(requests)
        longest_stop = [max((len(s) for s in r.stop), default=0) for r in requests]
        for step in range(max(r.max_tokens for r in requests)):
            step_deltas: list[Delta | None] = []
            next_ids = []
            for k, r in enumerate(requests):
                if done[k]:
                    step_deltas.append(None)
                    next_ids.append(self.pad_id)
                    continue
                token = self._sample(logits[k], r, generators[k])
                next_ids.append(token)
                finish = None
                if token in self.stop_token_ids and not r.ignore_eos:
                    finish = "stop"
                else:
                    tokens[k].append(token)
                text = self.tokenizer.decode(tokens[k], skip_special_tokens=True)
                hit = min((text.find(s) for s in r.stop if s and s in text), default=-1)
                if hit >= 0:
                    text, finish = text[:hit], "stop"
                if finish is None and len(tokens[k]) >= r.max_tokens:
                    finish = "length"
                if finish is None:  # hold back a partial character and what could start a stop string
                    safe = len(text.rstrip("\ufffd"))
                    safe = max(len(sent[k]), safe - max(0, longest_stop[k] - 1))
                    text = text[:safe]
                delta = text[len(sent[k]):] if text.startswith(sent[k]) else ""
                sent[k] = sent[k] + delta
                done[k] = finish is not None
                step_deltas.append(Delta(delta, finish, len(tokens[k])))
            yield step_deltas
            if all(done):
                return
            ids = torch.tensor(next_ids, device=device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((len(requests), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :].cpu()

    def complete(self, requests: list[GenRequest]) -> list[tuple[str, str, int]]:
        """(text, finish_reason, completion tokens) per request."""
        texts = [""] * len(requests)
        ends: list[tuple[str, int]] = [("length", 0)] * len(requests)
        for deltas in self.stream(requests):
            for k, d in enumerate(deltas):
                if d is not None:
                    texts[k] += d.text
                    if d.finish_reason:
                        ends[k] = (d.finish_reason, d.completion_tokens)
        return [(t, f, n) for t, (f, n) in zip(texts, ends)]
