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


def choose(rows: list[dict], max_ppl_increase: float, max_pass_drop: float,
           max_latency_ratio: float | None = None) -> tuple[dict, str]:
    """The smallest row within every budget relative to the first row (the unquantized model): perplexity,
    pass rate and, when given, latency per token at each measured batch size; and why it won (or why each
    smaller one did not)."""
    base = rows[0]
    refused, fits = [], []
    for row in rows[1:]:
        problems = []
        if row["perplexity"] > base["perplexity"] * (1 + max_ppl_increase):
            problems.append(f"perplexity {relative(row['perplexity'], base['perplexity']):+.1%} > "
                            f"+{max_ppl_increase:.0%}")
        if row["pass_rate"] < base["pass_rate"] - max_pass_drop:
            problems.append(f"pass rate {row['pass_rate'] - base['pass_rate']:+.3f} < -{max_pass_drop}")
        for key in sorted(k for k in base if k.startswith("latency_ms_per_token_b")):
            if max_latency_ratio is not None and key in row and base[key] > 0:
                ratio = row[key] / base[key]
                if ratio > max_latency_ratio:
                    problems.append(f"{ratio:.2f}x the latency at batch {key.rsplit('_b', 1)[1]} > "
                                    f"{max_latency_ratio:g}x")
        (refused.append(f"{row['variant']}: {'; '.join(problems)}") if problems else fits.append(row))
    chosen = min(fits, key=lambda r: r["bytes"]) if fits else base
    why = (f"{chosen['variant']}: the smallest within the budgets ({chosen['bytes'] / base['bytes']:.2f}x the "
           f"size of {base['variant']})" if fits else f"{base['variant']}: no variant within the budgets")
    smaller = [r for r in refused if r.split(":")[0] in {x["variant"] for x in rows if x["bytes"] < chosen["bytes"]}]
    return chosen, why + (f"; refused {' | '.join(smaller)}" if smaller else "")


def relative(value: float, base: float) -> float:
    return float((value - base) / base) if base else float(np.nan)
