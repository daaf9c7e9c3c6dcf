"""Alignment cores on small known inputs: prompt masking and packing, Bradley-Terry and
DPO losses, KL-shaped rewards, GAE against a hand computation, PPO's clipped losses,
bootstrap intervals and the PPO rollout batch layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.alignment import data
from stages.alignment.evaluate import bootstrap_ci, family_gains, pass_rates, paired_difference
from stages.alignment.objectives import (bradley_terry_loss, chosen_nll, dpo_loss, gae, leave_one_out, policy_loss,
                                         sequence_logprob, shaped_rewards, tied_head_nll, token_logprobs, value_loss)


class FakeTokenizer:
    """Whitespace 'tokenizer' with fixed ids: enough to test masking without a trained BPE."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def test_sft_labels_mask_the_prompt_and_keep_the_response():
    rows = [{"prompt_text": "aa bbb c", "response_text": "dddd ee"}]
    (item,) = data.encode_sft(rows, FakeTokenizer(), max_len=32)
    assert item.input_ids == [2, 3, 1, 4, 2]
    assert item.labels == [data.IGNORE] * 3 + [4, 2]


def test_packing_keeps_every_example_and_restarts_positions():
    rows = [{"prompt_text": "a " * p, "response_text": "bb " * r} for p, r in [(3, 2), (2, 2), (4, 1), (1, 1)]]
    items = data.encode_sft(rows, FakeTokenizer(), max_len=16)
    packed = data.pack_sft(items, max_len=10)
    assert [i.lengths for i in packed] == [[5, 4], [5, 2]]
    assert sum(sum(1 for x in i.labels if x != data.IGNORE) for i in packed) == 2 + 2 + 1 + 1
    batch = data.sft_batch(packed, pad_id=0)
    assert "attention_mask" not in batch  # positions carry the per-example mask
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1]  # padding is its own span
    assert batch["labels"][1, 7:].tolist() == [data.IGNORE] * 2


def test_pair_batch_marks_only_response_tokens():
    item = data.PairItem(prompt_len=2, chosen=[5, 6, 7, 8], rejected=[5, 6, 9])
    batch = data.pair_batch([item], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 9, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]


def test_sequence_logprob_sums_response_tokens():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3)  # p(token 2 | pos 0) = 3/6
    ids = torch.tensor([[1, 2, 3]])
    lp = token_logprobs(logits, ids)
    assert lp[0, 0].item() == pytest.approx(math.log(0.5))
    assert lp[0, 1].item() == pytest.approx(math.log(0.25))
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    assert sequence_logprob(logits, ids, mask).item() == pytest.approx(math.log(0.5) + math.log(0.25))


def test_bradley_terry_and_dpo_losses():
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(math.log1p(math.exp(-2)))
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert margin.item() == pytest.approx(0.5 * ((-1 + 2) - (-3 + 2)))  # 1.0
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    # RPO's term: per-token NLL of the chosen answers, pairs averaged (2 tokens at -1 each, 4 tokens at -2 total)
    assert chosen_nll(torch.tensor([-2.0, -2.0]), torch.tensor([2.0, 4.0])).item() == pytest.approx((1.0 + 0.5) / 2)


def test_dpo_recipe_adds_the_chosen_nll_only_when_asked():
    from stages.alignment.recipes import DPORecipe
    from stages.dpo.config import DPOConfig

    torch.manual_seed(0)
    vocab = 12

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, vocab)

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.emb(input_ids)})()

    model = Tiny()
    items = [data.PairItem(2, [1, 2, 3, 4], [1, 2, 5])]
    ref = np.zeros((1, 2))
    plain, figures = DPORecipe(DPOConfig()).loss(model, items, [0], 0, "cpu", ref)
    with_nll, rpo = DPORecipe(DPOConfig(rpo_alpha=0.5)).loss(model, items, [0], 0, "cpu", ref)
    assert "chosen_nll" not in figures and rpo["chosen_nll"] > 0
    assert with_nll.item() == pytest.approx(plain.item() + 0.5 * rpo["chosen_nll"].item())


def _tiny_llama(tied: bool = True, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=tied, pad_token_id=0,
                       **extra)


def test_tied_head_nll_is_the_causal_lm_loss_on_response_tokens():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(_tiny_llama()).eval()
    batch = {k: torch.from_numpy(v) for k, v in data.pair_batch([data.PairItem(2, [1, 2, 3, 4, 5], [1, 2, 6])], 0).items()}
    labels = batch["input_ids"][:1].clone()
    labels[:, :2] = -100  # the prompt
    out = lm(input_ids=batch["input_ids"][:1], labels=labels, output_hidden_states=True)
    got = tied_head_nll(out.hidden_states[-1], lm.get_input_embeddings().weight, batch["input_ids"][:1],
                        batch["response_mask"][:1])
    assert got.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_reward_recipe_adds_the_chosen_answers_lm_loss_only_when_asked():
    from transformers import LlamaForSequenceClassification

    from stages.alignment.recipes import RewardRecipe
    from stages.reward.config import RewardConfig

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_tiny_llama(num_labels=1))
    items = [data.PairItem(2, [1, 2, 3, 4], [1, 2, 5]), data.PairItem(1, [7, 8, 9], [7, 3, 3, 3])]

    def loss_and_grad(cfg):
        model.zero_grad()
        loss, figures = RewardRecipe(cfg).loss(model, items, [0, 1], 0, "cpu", None)
        loss.backward()
        return loss, figures, model.get_input_embeddings().weight.grad.clone()

    plain, figures, plain_grad = loss_and_grad(RewardConfig())
    regularised, lm, lm_grad = loss_and_grad(RewardConfig(lm_coef=0.5))
    assert "chosen_nll" not in figures and lm["chosen_nll"] > 0
    assert lm["bt_loss"].item() == pytest.approx(plain.item())
    assert regularised.item() == pytest.approx(plain.item() + 0.5 * lm["chosen_nll"].item())
    assert (lm_grad - plain_grad).abs().sum() > 0  # the LM term trains the shared embedding
    untied = LlamaForSequenceClassification(_tiny_llama(tied=False))
    with pytest.raises(ValueError, match="reward.lm_coef needs a backbone whose LM head is its embedding"):
        RewardRecipe(RewardConfig(lm_coef=0.5)).prepare(untied, items, "cpu", 2)


def test_shaped_rewards_put_the_score_on_the_last_response_token():
    logp = torch.tensor([[0.0, -1.0, -1.0, -2.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])  # the answer starts after a prompt and ends before padding
    rewards, kl = shaped_rewards(torch.tensor([2.0]), logp, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.0, 0.5, 0.0, -1.0, 0.0]]
    assert rewards[0].tolist() == pytest.approx([0.0, -0.05, 0.0, 0.1 + 2.0, 0.0])


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 1.0, 1.5, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    d3 = 2.0 - 1.5  # last token: no bootstrap
    d2 = 0.0 + gamma * 1.5 - 1.0
    d1 = 1.0 + gamma * 1.0 - 0.5
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    assert adv[0].tolist() == pytest.approx([0.0, a1, a2, a3, 0.0])
    assert ret[0].tolist() == pytest.approx([0.0, a1 + 0.5, a2 + 1.0, a3 + 1.5, 0.0])


def test_leave_one_out_ranks_answers_within_their_prompt():
    # two prompts x three answers: the second prompt scores high for every answer
    scores = torch.tensor([1.0, 2.0, 3.0, 11.0, 11.0, 14.0])
    out = leave_one_out(scores, 3)
    assert out.tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 11 - 12.5, 11 - 12.5, 14 - 11.0])
    assert out[3] < 0 < out[5]  # a prompt's high level cancels: only the answers' order counts
    assert leave_one_out(scores, 1).tolist() == scores.tolist()


def test_policy_loss_clips_large_ratios():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 1.0]]))  # ratios 2 and 1
    adv = torch.tensor([[1.0, 1.0]])
    loss, clip_frac, approx_kl = policy_loss(new, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)  # ratio 2 clipped to 1.2 for a positive advantage
    assert clip_frac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 * math.log(2) ** 2 / 2)
    loss_neg, _, _ = policy_loss(new, old, -adv, mask, clip=0.2)
    assert loss_neg.item() == pytest.approx((2.0 + 1.0) / 2)  # a negative advantage keeps the pessimistic ratio


def test_value_loss_takes_the_worse_of_raw_and_clipped():
    mask = torch.ones(1, 1)
    loss = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), mask, clip=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.5 - 2.0) ** 2)  # clipped prediction 0.5 is further from 2


def test_bootstrap_interval_covers_the_mean_and_narrows_with_data():
    values = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap_ci(values, 2000, 0)
    assert lo < 0.3 < hi and hi - lo < 0.25
    lo4, hi4 = bootstrap_ci(np.tile(values, 4), 2000, 0)
    assert hi4 - lo4 < hi - lo
    same = paired_difference([1.0, 0.0] * 50, [1.0, 0.0] * 50, 500, 0)
    assert same["mean"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_pass_rates_per_family_and_macro():
    rows = [{"family": "count_words"}] * 4 + [{"family": "language"}] * 2
    rates = pass_rates(rows, [True, False, False, False, True, True], 200, 0)
    assert rates["pass_rate.count_words"] == 0.25 and rates["pass_rate.language"] == 1.0
    assert rates["pass_rate"] == pytest.approx(0.625) and rates["pass_rate_micro"] == pytest.approx(0.5)


def test_rollout_batch_marks_answer_tokens():
    from stages.alignment.generate import Generation
    from stages.ppo.trainer import rollout_batch

    gens = [Generation([1, 2, 3], [4, 5], "x", True), Generation([1], [6, 7, 8], "y", False)]
    batch = rollout_batch(gens, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 6, 7, 8, 0]]
    assert batch["action_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]


def test_answer_logprobs_equal_full_logits_on_answer_positions():
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.ppo.roles import answer_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    attention = (ids != 0).long()
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        full = token_logprobs(model(input_ids=ids, attention_mask=attention).logits / 0.7, ids) * mask
        fast, entropy = answer_logprobs(model, {"input_ids": ids, "attention_mask": attention}, mask, 0.7, True)
    assert torch.allclose(full, fast, atol=1e-5)
    assert 0 < entropy.item() < math.log(50)


def test_family_gains_pair_prompts_within_each_family():
    rows = [{"family": "language"}] * 40 + [{"family": "count_words"}] * 40
    before = [False] * 80
    after = [True] * 30 + [False] * 10 + [False] * 40  # language gains 0.75, count_words nothing
    gains = family_gains(rows, after, before, 500, 0)
    assert gains["pass_rate.language.mean"] == pytest.approx(0.75) and gains["pass_rate.language.ci_low"] > 0.5
    assert gains["pass_rate.count_words.mean"] == 0 and gains["pass_rate.count_words.ci_high"] == 0


def test_weight_average_follows_the_exponential_average_and_copies_back():
    from stages.alignment.weight_average import WeightAverage

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    for value in (1.0, 3.0):  # average: 0 -> 0.5 -> 1.75
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    assert torch.allclose(average.shadow["weight"], torch.full((1, 2), 1.75))
    average.copy_to(model)
    assert torch.allclose(model.weight, torch.full((1, 2), 1.75))
    model_bf16 = torch.nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    assert WeightAverage(model_bf16, 0.99).shadow["weight"].dtype == torch.float32  # the average stays fp32
