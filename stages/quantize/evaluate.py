"""What each variant costs and keeps, measured the same way for all of them: validation
perplexity on tokenize's held-out split, held-out checker pass rate (greedy), size on
disk, and CPU latency per generated token at a few batch sizes."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from stages.alignment.evaluate import pass_rates, verdict
from stages.alignment.generate import generate
from stages.tokenize.packed import PackedDataset


@torch.no_grad()
def perplexity(model, tokens_dir: Path, sequences: int, batch_size: int = 8) -> float:
    """exp(mean token loss) over the first ``sequences`` validation sequences."""
    val = PackedDataset(Path(tokens_dir), "val")
    n = min(sequences, len(val))
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = val.batch(list(range(start, min(n, start + batch_size))))
        labels = torch.from_numpy(batch["labels"])
        out = model(input_ids=torch.from_numpy(batch["input_ids"]), labels=labels,
                    position_ids=torch.from_numpy(batch["position_ids"]))
        tokens = int((labels[:, 1:] != -100).sum())
        total += float(out.loss) * tokens
        count += tokens
    return math.exp(total / max(1, count))


def checker_pass_rate(model, tokenizer, rows: list[dict], ev, seed: int) -> tuple[dict[str, float], list[bool]]:
    outs = generate(model, tokenizer, [r["prompt_text"] for r in rows], ev.max_new_tokens, ev.batch_size)
    verdicts = [verdict(r, o.text) for r, o in zip(rows, outs)]
    return pass_rates(rows, verdicts, ev.bootstrap, seed), verdicts


@torch.no_grad()
def latency_per_token(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> float:
    """Median seconds per generated token (per sequence) for ``batch`` prompts decoding
    exactly ``new_tokens`` tokens each (no early stop), after one warm-up run."""
    texts = (prompts * batch)[:batch]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")

    def once() -> float:
        start = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, use_cache=True)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats)) / new_tokens


def directory_bytes(path: Path) -> int:
    """Bytes of the weights files (config and tokenizer files are the same for every variant)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".safetensors", ".gguf", ".bin")]
    return int(sum(p.stat().st_size for p in files))


def choose(rows: list[dict], max_ppl_increase: float, max_pass_drop: float) -> dict:
    """The smallest row within both budgets relative to the first row (the unquantized model)."""
    base = rows[0]
    fits = [r for r in rows[1:] if r["perplexity"] <= base["perplexity"] * (1 + max_ppl_increase)
            and r["pass_rate"] >= base["pass_rate"] - max_pass_drop]
    return min(fits, key=lambda r: r["bytes"]) if fits else base


def relative(value: float, base: float) -> float:
    return float((value - base) / base) if base else float(np.nan)
