"""LoRA adapters: only the adapter trains, a trained adapter changes the model, the merged model
computes what base + adapter computed, the reference is the base with adapters off, and a target
module the model does not have is a one-line error naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.alignment import lora
from stages.alignment.lora import LoraSettings
from stages.core.errors import ConfigError


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def _train(model, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_only_the_adapter_trains_and_its_size_is_the_adapters():
    settings = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    model = lora.wrap(_model(), settings, "causal")
    trained, total = lora.trainable(model)
    config = model.config
    head = config.hidden_size // config.num_attention_heads
    per_layer = settings.r * (config.hidden_size + config.num_attention_heads * head) \
        + settings.r * (config.hidden_size + config.num_key_value_heads * head)  # q: 32->32, v: 32->16
    assert trained == config.num_hidden_layers * per_layer
    assert total == sum(p.numel() for p in _model().parameters()) + trained
    assert all(("lora_" in name) == p.requires_grad for name, p in model.named_parameters())


def test_a_trained_adapter_changes_the_model_and_merging_keeps_its_logits(tmp_path):
    ids = torch.tensor([[3, 9, 27, 5, 11]])
    base_logits = _model().eval()(ids).logits
    model = lora.wrap(_model(), LoraSettings(r=4, dropout=0.0), "causal")
    _train(model)
    model.eval()
    adapted = model(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapter learned something
    with lora.reference(model):  # the KL reference: the same object with adapters off
        assert torch.allclose(model(ids).logits, base_logits, atol=1e-6)
    model.save_pretrained(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    plain = lora.merged(model)
    assert not lora.is_adapted(plain) and isinstance(plain, LlamaForCausalLM)
    assert (plain(ids).logits - adapted).abs().max() < 1e-4
    plain.save_pretrained(str(tmp_path / "merged"))
    reloaded = LlamaForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert (reloaded(ids).logits - adapted).abs().max() < 1e-4


def test_a_reward_models_score_head_trains_beside_the_adapter():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    config = _model().config
    config.num_labels, config.pad_token_id = 1, 0
    model = lora.wrap(LlamaForSequenceClassification(config), LoraSettings(r=2), "score")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in names) and any("lora_A" in n for n in names)
    assert not any("embed_tokens" in n for n in names)


def test_a_target_module_the_model_lacks_is_refused_naming_the_field(tmp_path):
    _model().save_pretrained(str(tmp_path))
    lora.check_targets(Path(tmp_path), LoraSettings(), "sft.lora.target_modules")  # Llama's own names pass
    with pytest.raises(ConfigError) as caught:
        lora.check_targets(Path(tmp_path), LoraSettings(target_modules=["q_proj", "c_attn"]), "sft.lora.target_modules")
    message = str(caught.value)
    assert message.startswith("sft.lora.target_modules: ['c_attn'] not found") and "q_proj" in message
    assert "\n" not in message


def test_lora_with_zero3_is_refused_in_the_config():
    from stages.sft.config import SFTConfig

    with pytest.raises(ValueError, match="zero_stage <= 2"):
        SFTConfig.model_validate({"lora": {"r": 4}, "distributed": {"zero_stage": 3}})
    assert SFTConfig.model_validate({"lora": {"r": 4}}).lora.target_modules == lora.LLAMA_LINEAR


def test_the_plain_state_of_an_adapted_model_is_the_merged_models_without_merging():
    model = lora.wrap(_model(), LoraSettings(r=4, dropout=0.0), "causal")
    _train(model)
    model.eval()
    state = lora.plain_state_dict(model)
    assert set(state) == set(_model().state_dict())
    ids = torch.tensor([[3, 9, 27, 5, 11]])
    adapted = model(ids).logits
    plain = _model()
    plain.load_state_dict(state)
    assert (plain.eval()(ids).logits - adapted).abs().max() < 1e-5
    assert lora.is_adapted(model) and torch.equal(model(ids).logits, adapted)  # the live model is untouched


def test_answer_logprobs_of_an_adapted_policy_follow_its_adapter_and_its_reference_is_the_base():
    from stages.ppo.roles import answer_logprobs

    ids = torch.tensor([[3, 9, 27, 5, 11, 2]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    base = answer_logprobs(_model().eval(), inputs, mask, 1.0)
    model = lora.wrap(_model(), LoraSettings(r=4, dropout=0.0), "causal")
    _train(model)
    model.eval()
    adapted = answer_logprobs(model, inputs, mask, 1.0)
    full = torch.log_softmax(model(**inputs).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0] * mask[0]
    assert torch.allclose(adapted[0], full, atol=1e-5) and not torch.allclose(adapted, base, atol=1e-4)
    with lora.reference(model):
        assert torch.allclose(answer_logprobs(model, inputs, mask, 1.0), base, atol=1e-6)


def test_a_pipeline_whose_lora_targets_are_missing_is_refused_before_anything_runs(monkeypatch):
    """Up front, against the model the stage will start from: lmforge's Llama, or the imported SmolLM2 GGUF."""
    from pipelines.config import load_config
    from tests.conftest import DATA_DIR, TINY

    monkeypatch.setenv("LMFORGE_DATA_DIR", str(DATA_DIR))
    assert load_config(TINY, ["sft.lora.r=4"]).sft.lora.r == 4
    with pytest.raises(ConfigError) as caught:
        load_config(TINY, ["sft.lora.target_modules=[q_proj, c_attn]"])
    assert "sft.lora.target_modules: ['c_attn'] not found in the base model" in str(caught.value)
    load_config(TINY, ["dpo.lora.target_modules=[c_attn]"])  # dpo does not run on the ppo path: not its concern
    with pytest.raises(ConfigError, match=r"grpo\.lora\.target_modules: \['wte'\]"):
        load_config(TINY, ["pipeline.base=import", "pipeline.alignment=grpo", "grpo.lora.target_modules=[wte]"])
