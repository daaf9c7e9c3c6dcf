"""Does vLLM (the CPU build this project installs) serve a LoRA adapter without merging it? Loads the
base model with ``enable_lora``, generates greedily with the adapter a run logged (``adapter/``)
as a ``LoRARequest``, and compares the tokens with the merged model's that the run registered.

    LMFORGE_HOME=/tmp/fthome .venv/bin/python bench/vllm_lora_check.py --run RUN_ID --base BASE_RUN_ID

RUN_ID: a LoRA alignment run (sft, grpo, ...) with ``adapter/`` and ``model/`` artifacts; BASE_RUN_ID:
the run whose ``model/`` the adapter was trained on (grpo's: the sft run; sft's: import_model's). The
first generation with an adapter includes loading it: the times are not a throughput comparison.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from stages.core.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri())
    scratch = Path(tempfile.mkdtemp(prefix="vllm-lora-"))
    base = Path(client.download_artifacts(args.base, "model", str(scratch / "base")))
    merged = Path(client.download_artifacts(args.run, "model", str(scratch / "merged")))
    adapter = Path(client.download_artifacts(args.run, "adapter", str(scratch / "adapter")))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    questions = ["Reverse the order of the words: the cat sat on the mat", "What is the capital of France?",
                 "Write the sentence in uppercase: apt installs packages", "How many words are in: a b c d",
                 "Which language is this: Der Hund schläft.", "What is the third word of: red green blue yellow",
                 "Is this review positive or negative: a dull, tiring film", "Name a prime number."][: args.prompts]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in questions]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)

    def tokens(outputs) -> list[list[int]]:
        return [list(o.outputs[0].token_ids) for o in outputs]

    t0 = time.time()
    llm = LLM(model=str(base), dtype="float32", enforce_eager=True, enable_lora=True, max_lora_rank=64,
              max_loras=1, enable_chunked_prefill=False)
    started = time.time() - t0
    t0 = time.time()
    with_adapter = tokens(llm.generate(prompts, params, lora_request=LoRARequest("run", 1, str(adapter)),
                                       use_tqdm=False))
    adapter_s = time.time() - t0
    plain = tokens(llm.generate(prompts, params, use_tqdm=False))
    del llm
    reference = LLM(model=str(merged), dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
    t0 = time.time()
    merged_tokens = tokens(reference.generate(prompts, params, use_tqdm=False))
    merged_s = time.time() - t0
    same = sum(a == b for a, b in zip(with_adapter, merged_tokens))
    changed = sum(a != b for a, b in zip(with_adapter, plain))
    print(f"vLLM with enable_lora started in {started:.1f} s")
    print(f"adapter served unmerged: {same}/{len(prompts)} greedy answers equal the merged model's; "
          f"{changed}/{len(prompts)} differ from the base model's")
    print(f"generation: {adapter_s:.2f} s with the adapter, {merged_s:.2f} s merged ({len(prompts)} prompts, "
          f"{args.max_tokens} tokens)")
    for q, a, m in zip(questions, with_adapter, merged_tokens):
        print(f"- {q!r}: adapter {tokenizer.decode(a, skip_special_tokens=True)!r} | merged "
              f"{tokenizer.decode(m, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
