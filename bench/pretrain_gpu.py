"""The pretrain stage on a GPU (bf16, DeepSpeed ZeRO, SDPA): tokens/s and MFU against
the card's bf16 peak. Not part of CI; for a machine with CUDA (e.g. the `device` tool).

Usage: python bench/pretrain_gpu.py --tokens TOKENIZE_OUT [--preset gpu-125m] [--steps 40]
         [--zero 2] [--micro 16] [--batch-tokens 131072] [--workers 1]
(TOKENIZE_OUT is a tokenize stage output folder with tokens/ and tokenizer/; the demo's
is ~20 MB and travels with the working tree.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.runner import execute_stage, input_from_path
from stages.pretrain.config import PretrainConfig
from stages.pretrain.stage import PretrainStage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--preset", default="gpu-125m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=131_072)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("pretrain_gpu.py needs CUDA; on CPU use bench/pretrain_bench.py")
    cfg = PretrainConfig.model_validate({
        "model": {"preset": args.preset}, "max_steps": args.steps, "global_batch_tokens": args.batch_tokens,
        "micro_batch_size": args.micro, "log_every": 5, "eval_every": args.steps, "checkpoint_every": 10**6,
        "eval_sequences": 64,
        "distributed": {"num_workers": args.workers, "use_gpu": "yes", "precision": "bf16",
                        "zero_stage": args.zero, "cpus_per_worker": 2},
    })
    work = Path(tempfile.mkdtemp(prefix="pretrain-gpu-"))
    os.environ["LMFORGE_HOME"] = str(work / "home")
    inputs = {"tokens": input_from_path("tokens", args.tokens / "tokens"),
              "tokenizer": input_from_path("tokenizer", args.tokens / "tokenizer")}
    run = execute_stage(PretrainStage(), cfg, inputs, work / "out", seed=0, ray_num_cpus=os.cpu_count())
    history = [json.loads(x) for x in (work / "out" / "train_log.jsonl").read_text().splitlines()]
    steady = [h for h in history if "tokens_per_s" in h and h["step"] > 5]
    print(json.dumps({
        "gpu": torch.cuda.get_device_name(), "preset": args.preset, "zero_stage": args.zero,
        "workers": args.workers, "global_batch_tokens": args.batch_tokens,
        "tokens_per_s": round(sum(h["tokens_per_s"] for h in steady) / len(steady)),
        "mfu": round(sum(h["mfu"] for h in steady) / len(steady), 4),
        "final_val_loss": run.manifest["metrics"].get("final_val_loss"),
        "wall_s": run.manifest["duration_s"],
    }, indent=1))


if __name__ == "__main__":
    main()
