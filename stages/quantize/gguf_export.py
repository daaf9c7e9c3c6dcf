"""GGUF export (Q8_0) that llama.cpp itself loads: llama.cpp's tensor names (from the
``gguf`` package's own LLAMA name map), its metadata keys, its rotary layout for Q and K,
and the byte-level BPE vocabulary with merges and special tokens.

What llama.cpp's ``convert_hf_to_gguf.py`` does for a Llama, for the subset our models
use (no biases, no rope scaling); the ``gguf`` package writes the file and quantizes the
matrices to Q8_0 (32-value blocks, one fp16 scale each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

Q8_BLOCK = 32


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face keeps each head's rotary pairs in two halves; llama.cpp interleaves them."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """``permute_rotary`` undone: llama.cpp's interleaved rotary pairs back to Hugging Face's halves."""
    return (weight.reshape(n_head, weight.shape[0] // n_head // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama_tensors(state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """Hugging Face names -> llama.cpp names, Q/K permuted; a tied head is left to token_embd."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out = {}
    for hf_name, value in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp falls back to token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name.endswith("q_proj.weight"):
            value = permute_rotary(value, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            value = permute_rotary(value, config.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for tensor '{hf_name}'")
        out[name] = value
    return out


def _vocabulary(tokenizer_dir: Path, tokenizer):
    """(tokens in id order, token types, merges) in the byte-level form llama.cpp's gpt2 vocab reads."""
    import gguf

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(tokenizer.all_special_tokens) | {t["content"] for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(len(by_id)):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        types.append(gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def export_q8_0(model_dir: Path, out_path: Path, name: str) -> dict[str, int]:
    """Write ``out_path``; returns tensor counts by GGML type."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = llama_tensors(state, config)
    head_dim = config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                    (config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges = _vocabulary(model_dir, tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token in ((writer.add_bos_token_id, tokenizer.bos_token), (writer.add_eos_token_id, tokenizer.eos_token),
                          (writer.add_pad_token_id, tokenizer.pad_token)):
        if token is not None:
            setter(tokenizer.convert_tokens_to_ids(token))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    counts: dict[str, int] = {}
    for tensor_name, value in tensors.items():
        if value.ndim == 2 and value.shape[-1] % Q8_BLOCK == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(tensor_name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
        else:  # norms (and any row not a multiple of 32) stay f32, as llama.cpp's converter keeps them
            qtype = gguf.GGMLQuantizationType.F32
            writer.add_tensor(tensor_name, value.astype(np.float32))
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def load_weights(path: Path, model) -> None:
    """Put a GGUF file's tensors, dequantized exactly as llama.cpp reads them (Q8_0: int8 x fp16 scale per
    32 values), into ``model`` (a Llama of the same shape): the file's own weights, evaluated in torch."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    state = model.state_dict()
    loaded = {}
    for hf_name, current in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensor = stored[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        value = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(current.shape))
        if hf_name.endswith("q_proj.weight"):
            value = unpermute_rotary(value, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            value = unpermute_rotary(value, config.num_key_value_heads)
        loaded[hf_name] = torch.tensor(value, dtype=torch.float32)  # a copy: the reader maps the file read-only
    model.load_state_dict(loaded, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()


def read_back(path: Path) -> dict:
    """Architecture, metadata keys and tensors (name -> (type, shape)) as ``gguf.GGUFReader`` sees them."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            fields[key] = len(field.data)  # sizes, not the 8k-entry lists
        else:
            fields[key] = field.contents()
    tensors = {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in reader.tensors}
    return {"fields": fields, "tensors": tensors, "reader": reader}
