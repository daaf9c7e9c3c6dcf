"""quantize's core: torchao variants stored as transformers checkpoints and loaded back identical,
the GGUF file's llama.cpp names and metadata, and the choice rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.quantize import evaluate, storage
from stages.quantize.gguf_export import export_q8_0, load_weights, permute_rotary, read_back, unpermute_rotary
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("quant") / "model")


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_variant_is_a_torchao_checkpoint_that_loads_back_identical(model_dir, tmp_path, variant):
    """A variant is transformers' torchao checkpoint (what vLLM loads with quantization=torchao): its linear
    weights are stored quantized, and the folder loads back to the very model quantize measured."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = storage.save_variant(model_dir, tmp_path / variant, variant)
    assert storage.is_variant(tmp_path / variant) and not storage.is_variant(model_dir)
    # linear weights at one byte per value (int4 is kept one value per byte by torchao), the embedding in fp32
    linear = sum(p.numel() for n, p in reference.named_parameters() if "embed" not in n and n.endswith("proj.weight"))
    saved, full = storage.weight_bytes(tmp_path / variant), storage.weight_bytes(model_dir)
    assert full - saved > 0.7 * 3 * linear  # 4 bytes -> ~1 byte per linear weight (scales aside)
    reloaded = storage.load_variant(tmp_path / variant)
    assert type(reloaded.model.layers[0].mlp.down_proj.weight).__name__ != "Parameter"  # still quantized
    ids = torch.randint(0, reference.config.vocab_size, (2, 16))
    with torch.no_grad():
        quantized, again, exact = model(ids).logits, reloaded(ids).logits, reference(ids).logits
    assert torch.equal(quantized, again)  # what deploy loads is what was measured
    assert 0 < (quantized - exact).abs().max() < (0.05 if variant == "int8" else 0.5)
    out = reloaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_gguf_uses_llama_cpp_names_and_metadata(model_dir, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    path = tmp_path / "m.gguf"
    counts = export_q8_0(model_dir, path, "lmforge-test")
    assert counts["Q8_0"] > 0
    back = read_back(path)
    fields, tensors = back["fields"], back["tensors"]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    expected = {names.get_name(k, try_suffixes=(".weight",)) for k in model.state_dict() if k != "lm_head.weight"}
    assert set(tensors) == expected  # llama.cpp's names, tied head left to token_embd
    assert "token_embd.weight" in tensors and "blk.1.ffn_down.weight" in tensors
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
    assert fields["llama.context_length"] == 256
    assert fields["llama.attention.head_count_kv"] == 1 and fields["llama.rope.dimension_count"] == 32
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.tokens"] == model.config.vocab_size
    assert tensors["blk.0.attn_q.weight"][0] == "Q8_0" and tensors["output_norm.weight"][0] == "F32"
    # the stored values are the model's (Q/K in llama.cpp's rotary layout), within Q8_0 rounding
    reader = back["reader"]
    stored = {t.name: t for t in reader.tensors}["blk.0.attn_k.weight"]
    values = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(32, 64)  # 1 KV head of 32
    hf = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    assert np.abs(values - permute_rotary(hf, 1)).max() < np.abs(hf).max() / 100


def test_gguf_weights_load_back_into_the_model_within_q8_0_rounding(model_dir, tmp_path):
    """What quantize evaluates as the GGUF variant: the file's dequantized tensors, Q/K back in Hugging Face's
    rotary layout, give the model's logits up to Q8_0 rounding (a layout error would scramble them)."""
    from transformers import AutoModelForCausalLM

    weight = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert np.array_equal(unpermute_rotary(permute_rotary(weight, 2), 2), weight)
    path = tmp_path / "m.gguf"
    export_q8_0(model_dir, path, "lmforge-test")
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    torch.nn.init.zeros_(model.model.layers[0].self_attn.q_proj.weight)  # proves the file's values go in
    load_weights(path, model)
    ids = torch.randint(0, reference.config.vocab_size, (2, 16))
    with torch.no_grad():
        full, read = reference(ids).logits, model(ids).logits
    assert 0 < (read - full).abs().max() < 0.05 * full.abs().max()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_choice_is_the_smallest_variant_within_every_budget_and_says_why():
    rows = [{"variant": "fp32", "bytes": 100, "perplexity": 10.0, "pass_rate": 0.5, "latency_ms_per_token_b1": 10.0},
            {"variant": "int8", "bytes": 40, "perplexity": 10.1, "pass_rate": 0.5, "latency_ms_per_token_b1": 9.0},
            {"variant": "int4", "bytes": 25, "perplexity": 10.5, "pass_rate": 0.5, "latency_ms_per_token_b1": 20.0}]
    chosen, why = evaluate.choose(rows, 0.02, 0.02)
    assert chosen["variant"] == "int8" and "int4: perplexity +5.0% > +2%" in why  # int4 is +5 %
    assert evaluate.choose(rows, 0.10, 0.02)[0]["variant"] == "int4"  # no latency budget: the smallest
    chosen, why = evaluate.choose(rows, 0.10, 0.02, max_latency_ratio=1.0)
    assert chosen["variant"] == "int8" and "int4: 2.00x the latency at batch 1 > 1x" in why
    assert evaluate.choose(rows, 0.10, 0.02, max_latency_ratio=2.5)[0]["variant"] == "int4"
    rows[1]["pass_rate"] = rows[2]["pass_rate"] = 0.4
    chosen, why = evaluate.choose(rows, 0.10, 0.02)
    assert chosen["variant"] == "fp32" and why.startswith("fp32: no variant")  # nothing fits: the unquantized model


def test_vllm_serves_both_variants_with_transformers_greedy_answer(model_dir, tmp_path):
    """What deploy serves: vLLM loads the int8 and the int4 folder (``quantization="torchao"``, as
    ``vllm_engine.cli_args`` passes it) and answers greedily what transformers answers from the same folder."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tokenizer("Debian packages", add_special_tokens=False)["input_ids"]
    for variant in ("int8", "int4"):
        folder = tmp_path / variant
        storage.save_variant(model_dir, folder, variant)
        tokenizer.save_pretrained(str(folder))
        expected = storage.load_variant(folder).generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                                         min_new_tokens=6)[0, len(prompt):].tolist()
        llm = LLM(model=str(folder), dtype="float32", enforce_eager=True, quantization="torchao", max_model_len=256)
        answer = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=6, temperature=0,
                                                                            ignore_eos=True), use_tqdm=False)
        assert list(answer[0].outputs[0].token_ids) == expected, variant
        del llm
