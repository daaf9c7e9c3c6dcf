"""The generation engine behind the server: continuous batching over a KV cache.

Requests join the running batch between decoding steps (their prompts are prefilled and
their cache rows merged in, left-padded to a common length) and leave it the step they
finish, so a long answer never holds a new request back and a short one frees its row at
once, the scheduling vLLM and TGI use. Each row keeps its own sampling settings
(temperature, top_p, seed, max tokens, stop strings, ignore_eos), which ``model.generate``
cannot (one sampling config per call). A step yields text deltas per row, so the same
loop serves streaming and non-streaming requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F


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


@dataclass(eq=False)
class Row:
    """One request in the running batch; ``owner`` is whatever the caller wants back with its deltas."""

    request: GenRequest
    owner: Any = None
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    cancelled: bool = False  # set by the caller (client went away); the row leaves at the next step


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
    """Holds the running batch: its rows, their KV cache, attention mask and next logits.

    Not thread-safe: one caller drives ``add`` and ``step`` (the server's scheduler loop).
    """

    def __init__(self, model, tokenizer, stop_token_ids: list[int]):
        self.model, self.tokenizer = model, tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self._reset_batch()

    def _reset_batch(self) -> None:
        self.rows = []
        self.cache = None  # DynamicCache, [rows, heads, length, dim] per layer
        self.mask: torch.Tensor | None = None  # [rows, length]: 1 where the cache holds a real token
        self.logits: torch.Tensor | None = None  # [rows, vocab] for each row's next token

    def reset(self) -> None:
        """Drop the running batch (after an error the caller has reported to its rows)."""
        self._reset_batch()

    # --- joining ---------------------------------------------------------------------
    @torch.no_grad()
    def add(self, requests: list[GenRequest], owners: list[Any] | None = None) -> list[Row]:
        """Prefill ``requests`` and merge them into the running batch; their first token comes at the next step."""
        if not requests:
            return []
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for k, r in enumerate(requests):  # left padding: every row's next token is at the same column
            ids[k, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[k, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        rows = [Row(r, owner, self._generator(r)) for r, owner in zip(requests, owners or [None] * len(requests))]
        self._merge(rows, out.cache, mask, out.logits[:, -1, :].float().cpu())
        return rows

    @staticmethod
    def _generator(request: GenRequest) -> torch.Generator | None:
        if request.temperature <= 0:
            return None
        generator = torch.Generator(device="cpu")
        generator.manual_seed(request.seed if request.seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
        return generator

    def _merge(self, rows: list[Row], cache, mask: torch.Tensor, logits: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.logits = rows, cache, mask, logits
            return
        length = max(self.mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - t.shape[-dim_from_end]
            if missing == 0:
                return t
            pad = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(t, pad)

        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([left_pad(old.keys, 2), left_pad(new.keys, 2)])
            old.values = torch.cat([left_pad(old.values, 2), left_pad(new.values, 2)])
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(mask, 1)])
        self.logits = torch.cat([self.logits, logits])
        self.rows = self.rows + rows

    # --- decoding --------------------------------------------------------------------
    def _keep(self, keep: list[int]) -> None:
        """Only the rows at ``keep`` stay; cache columns that no remaining row uses are cut."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        first = int(mask.any(0).long().argmax())  # leading columns that are padding in every row
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = mask[:, first:]
        self.logits = self.logits[index.cpu()]
        self.rows = [self.rows[k] for k in keep]

    def _sample(self, logits: torch.Tensor, row: Row) -> int:
        request = row.request
        if row.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / request.temperature, dim=-1)
        if request.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < request.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=row.generator))

    def _advance_row(self, row: Row, token: int) -> Delta:
        request = row.request
        finish = None
        if token in self.stop_token_ids and not request.ignore_eos:
            finish = "stop"
        else:
            row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        hit = min((text.find(s) for s in request.stop if s and s in text), default=-1)
        if hit >= 0:
            text, finish = text[:hit], "stop"
        if finish is None and len(row.tokens) >= request.max_tokens:
            finish = "length"
        if finish is None:  # hold back a partial character and what could start a stop string
            longest_stop = max((len(s) for s in request.stop), default=0)
            safe = len(text.rstrip("\ufffd"))
            text = text[:max(len(row.sent), safe - max(0, longest_stop - 1))]
        delta = text[len(row.sent):] if text.startswith(row.sent) else ""
        row.sent += delta
        row.done = finish is not None
        return Delta(delta, finish, len(row.tokens))

    @torch.no_grad()
    def step(self) -> list[tuple[Row, Delta]]:
        """One token for every running row: its delta; finished and cancelled rows leave the batch."""
        self._keep([k for k, row in enumerate(self.rows) if not row.cancelled])
        if not self.rows:
            return []
        sampled = [self._sample(self.logits[k], row) for k, row in enumerate(self.rows)]
        deltas = [(row, self._advance_row(row, token)) for row, token in zip(self.rows, sampled)]
        running = [k for k, row in enumerate(self.rows) if not row.done]
        next_ids = [sampled[k] for k in running]
        self._keep(running)
        if self.rows:
            ids = torch.tensor(next_ids, device=self.device).unsqueeze(1)
            positions = self.mask.sum(1, keepdim=True)  # the count of real tokens so far
            self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype,
                                                        device=self.device)], dim=1)
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                             cache=self.cache, use_cache=True)
            self.cache, self.logits = out.cache, out.logits[:, -1, :].float().cpu()
        return deltas

    # --- one batch, start to end (lmforge generate, tests) --------------------------------
    def stream(self, requests: list[GenRequest]) -> Iterator[list[Delta | None]]:
        """Per step, one entry per request: a ``Delta`` while it runs or as it ends, then None.

        Uses the running batch, so it must not be mixed with a scheduler driving the same engine.
        """
        rows = self.add(requests)
        position = {id(row): k for k, row in enumerate(rows)}
        while any(not row.done for row in rows):
            step: list[Delta | None] = [None] * len(rows)
            for row, delta in self.step():
                if id(row) in position:
                    step[position[id(row)]] = delta
            yield step

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
