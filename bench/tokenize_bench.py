"""Tokenization throughput through the tokenize stage (Ray actors, packing, shard files)
against ``Tokenizer.encode_batch_fast`` called directly on the same text in the same
run, plus the packing efficiency the stage reaches.

Usage: .venv/bin/python bench/tokenize_bench.py --docs QUALITY_OUT/kept.jsonl [--repeats 2]
(any JSONL/Parquet of {"id", "text"} records; the demo's quality output is the real case)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.docio import read_documents
from stages.core.runner import execute_stage, input_from_path
from stages.tokenize import bpe
from stages.tokenize.config import TokenizeConfig, TokenizerConfig
from stages.tokenize.stage import TokenizeStage


def direct(tokenizer_dir: Path, texts: list[str], batch: int) -> tuple[float, int]:
    """encode_batch_fast over the same texts in batches, all cores (the library's own parallelism)."""
    tok = bpe.load_fast(tokenizer_dir)
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(texts[i:i + batch], add_special_tokens=False))
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    texts = [d["text"] for d in read_documents(args.docs) if isinstance(d, dict) and isinstance(d.get("text"), str)]
    work = Path(tempfile.mkdtemp(prefix="tokbench-"))
    os.environ.setdefault("LMFORGE_HOME", str(work / "home"))
    tok_dir = work / "tokenizer"
    bpe.save_hf_folder(bpe.train_bpe(texts, args.vocab), tok_dir, 256)
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(path=str(tok_dir)), validation_fraction=0.02)
    stage = TokenizeStage()
    docs_input = {"docs": input_from_path("docs", args.docs)}
    rows = []
    for r in range(args.repeats):  # alternate candidate and baseline (the machine is shared)
        d_s, d_tokens = direct(tok_dir, texts, cfg.batch_docs)
        out = work / f"out{r}"
        run = execute_stage(stage, cfg, dict(docs_input), out, seed=r)
        m = run.manifest["metrics"]
        rows.append({"direct_tokens_per_s": d_tokens / d_s, "stage_tokens_per_s": m["tokens_per_s"],
                     "stage_wall_s": run.manifest["duration_s"], "tokens": m["train_tokens"] + m["val_tokens"],
                     "direct_tokens": d_tokens, "packing_efficiency": m["packing_efficiency"],
                     "chars_per_token": m["chars_per_token"]})
        shutil.rmtree(out)
    best = {k: max(row[k] for row in rows) for k in ("direct_tokens_per_s", "stage_tokens_per_s")}
    print(json.dumps({
        "docs": len(texts), "chars": sum(map(len, texts)), "runs": rows,
        "direct_tokens_per_s": round(best["direct_tokens_per_s"]),
        "stage_tokens_per_s": round(best["stage_tokens_per_s"]),
        "ratio_stage_vs_direct": round(best["stage_tokens_per_s"] / best["direct_tokens_per_s"], 3),
        "packing_efficiency": rows[-1]["packing_efficiency"], "chars_per_token": rows[-1]["chars_per_token"],
    }, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
