"""PPO's vLLM rollouts: after an update that changes the policy, vLLM's greedy answers are the
policy's own (transformers on the same weights) and differ from the ones before; the log-probs
PPO computes for vLLM's samples are the training model's (importance ratio 1 at the first epoch)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from stages.alignment.generate import load_policy
    from stages.ppo.vllm_rollouts import VLLMRollouts

    folder = make_tiny_model(tmp_path_factory.mktemp("rollouts") / "model")
    model, tokenizer = load_policy(folder)
    return model, tokenizer, VLLMRollouts(folder, tokenizer, seed=0, max_model_len=256)


PROMPTS = ["<|user|>\nWhat does apt do?<|end|>\n<|assistant|>\n", "<|user|>\nName a shell.<|end|>\n<|assistant|>\n"]


def _greedy(model, tokenizer, rollouts):
    from stages.alignment.generate import generate

    ours = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=1)
    theirs = rollouts.generate(PROMPTS, max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, seed=0)
    return [g.response_ids for g in ours], [g.response_ids for g in theirs], theirs


def test_weights_pushed_after_an_update_reach_vllm(policy):
    model, tokenizer, rollouts = policy
    hf_before, vllm_before, generations = _greedy(model, tokenizer, rollouts)
    assert vllm_before == hf_before and all(g.prompt_ids for g in generations)
    with torch.no_grad():  # an update that changes what the policy says
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    rollouts.load_weights(model.state_dict())
    hf_after, vllm_after, _ = _greedy(model, tokenizer, rollouts)
    assert vllm_after == hf_after and vllm_after != vllm_before


def test_a_lora_policys_weights_reach_vllm_with_the_adapter_folded_in(policy):
    """A LoRA policy's update is in its adapter only: vLLM gets the plain weights with it folded in (no merge in
    place) and answers as the adapted policy does; with the adapters off, the policy answers as before."""
    import copy

    from stages.alignment import lora

    base, tokenizer, rollouts = policy
    rollouts.load_weights(base.state_dict())
    hf_base, _, _ = _greedy(base, tokenizer, rollouts)
    adapted = lora.wrap(copy.deepcopy(base), lora.LoraSettings(r=4, dropout=0.0), "causal").eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(2)
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    rollouts.load_weights(lora.plain_state_dict(adapted))
    hf_adapted, vllm_adapted, _ = _greedy(adapted, tokenizer, rollouts)
    assert vllm_adapted == hf_adapted and hf_adapted != hf_base
    with lora.reference(adapted):
        assert _greedy(adapted, tokenizer, rollouts)[0] == hf_base
    rollouts.load_weights(base.state_dict())


def test_the_logprobs_of_vllm_samples_are_the_training_models(policy):
    from stages.ppo.roles import answer_logprobs

    model, tokenizer, rollouts = policy
    samples = rollouts.generate(PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, seed=3)
    again = rollouts.generate(PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, seed=3)
    assert [s.response_ids for s in samples] == [s.response_ids for s in again]  # seeded
    for sample in samples:
        ids = torch.tensor([sample.prompt_ids + sample.response_ids])
        mask = torch.zeros(1, ids.shape[1] - 1)
        mask[0, len(sample.prompt_ids) - 1:] = 1
        with torch.no_grad():
            logp = answer_logprobs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mask, 1.0)
        # vLLM's own log-probs of its tokens, recomputed: the ratio new/old is 1 before any update
        from vllm import SamplingParams

        scored = rollouts.llm.generate([{"prompt_token_ids": sample.prompt_ids + sample.response_ids}],
                                       SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        theirs = [next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
                  for d, t in zip(scored.prompt_logprobs[len(sample.prompt_ids):], sample.response_ids)]
        ours = logp[0, len(sample.prompt_ids) - 1:].tolist()
        assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3


def test_a_batch_larger_than_one_step_with_seeded_samples(policy):
    """PPO's held-out evaluation sends hundreds of seeded prompts at once: more prompt tokens than one engine step
    takes. On CPU vLLM 0.32 fails on a seeded prompt split over two steps; whole prompts per step do not."""
    _, tokenizer, rollouts = policy
    prompts = [PROMPTS[i % 2].replace("apt", f"apt {i}") for i in range(400)]  # ~9k prompt tokens, above 4096
    out = rollouts.generate(prompts, max_new_tokens=3, do_sample=True, temperature=0.7, top_p=1.0, seed=11)
    assert len(out) == 400 and all(g.response_ids for g in out)
    again = rollouts.generate(prompts[:3], max_new_tokens=3, do_sample=True, temperature=0.7, top_p=1.0, seed=11)
    assert [g.response_ids for g in again] == [g.response_ids for g in out[:3]]  # the seeds still hold
