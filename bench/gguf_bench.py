"""Load the quantize stage's Q8_0 GGUF with llama.cpp (llama-cpp-python) and generate:
the proof that the file is llama.cpp's format, not Hugging Face's renamed. Compares
llama.cpp's greedy tokens and speed with the unquantized transformers model on the same
prompts in the same process.

    .venv/bin/pip install llama-cpp-python==0.3.36   # source build, several minutes; not a project dependency
    .venv/bin/python bench/gguf_bench.py --quantize-dir Q --model-dir MODEL

(``Q`` = a quantize stage output folder; ``MODEL`` = the model it quantized.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPTS = ["Which language is this text in? Das ist nicht mein Problem.",
           "What type of answer does this question ask for? Where is the Eiffel Tower?",
           "How many words are in: the cat sat on the mat",
           "Which language is this text in? Il pleut depuis ce matin."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantize-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: .venv/bin/pip install llama-cpp-python==0.3.36") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(args.model_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32).eval()
    gguf_path = args.quantize_dir / "model-q8_0.gguf"
    llm = Llama(model_path=str(gguf_path), n_ctx=256, n_threads=1, verbose=False, logits_all=False)
    agree, total, t_cpp, t_hf = 0, 0, 0.0, 0.0
    samples = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        start = time.perf_counter()
        cpp_ids = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True):
            cpp_ids.append(token)
            if len(cpp_ids) >= args.new_tokens:
                break
        t_cpp += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              do_sample=False, pad_token_id=tok.pad_token_id)
        t_hf += time.perf_counter() - start
        hf_ids = out[0, len(ids):].tolist()
        n = min(len(cpp_ids), len(hf_ids))
        agree += sum(a == b for a, b in zip(cpp_ids[:n], hf_ids[:n]))
        total += n
        samples.append({"prompt": prompt, "llama.cpp": tok.decode(cpp_ids), "transformers": tok.decode(hf_ids)})
    meta = llm.metadata
    print(json.dumps({"gguf": str(gguf_path), "bytes": gguf_path.stat().st_size,
                      "architecture": meta.get("general.architecture"), "tensors_loaded_by_llama_cpp": True,
                      "greedy_token_agreement_with_fp32": agree / max(1, total), "tokens_compared": total,
                      "llama_cpp_ms_per_token": 1000 * t_cpp / max(1, total),
                      "transformers_fp32_ms_per_token": 1000 * t_hf / max(1, total),
                      "samples": samples}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
