"""The Llama-architecture model, built from config with ``transformers`` (no download)."""

from __future__ import annotations

from stages.pretrain.config import ModelConfig


def llama_config(model: ModelConfig, vocab_size: int, seq_len: int, pad_id: int, eos_id: int):
    from transformers import LlamaConfig

    d = model.dims()
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_layers"], num_attention_heads=d["num_heads"],
        num_key_value_heads=d["num_kv_heads"], max_position_embeddings=seq_len,
        rope_theta=model.rope_theta, tie_word_embeddings=model.tie_embeddings,
        attention_dropout=model.dropout, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
        use_cache=False,
    )


def build_model(model: ModelConfig, vocab_size: int, seq_len: int, pad_id: int, eos_id: int, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` using SDPA attention; same seed, same weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = llama_config(model, vocab_size, seq_len, pad_id, eos_id)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops_per_token(n_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention scores (PaLM, appendix B)."""
    return 6.0 * n_params + 12.0 * num_layers * hidden_size * seq_len
