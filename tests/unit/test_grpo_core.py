"""GRPO's pieces on small real inputs: advantages within each prompt's group, the k3 KL estimator,
the reward mix (and its refusal when nothing is rewarded), and the config's DAG place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from stages.alignment.objectives import group_advantages, k3_kl
from stages.alignment.rewards import RewardMix, mixed


def test_advantages_are_centred_and_scaled_within_each_group_only():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # two prompts, groups of four
    scaled = group_advantages(rewards, 4)
    assert torch.allclose(scaled[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)  # mean 0.5, std 0.5
    assert torch.equal(scaled[4:], torch.zeros(4))  # every answer alike: nothing to learn, not a division by zero
    centred = group_advantages(rewards, 4, scale=False)
    assert torch.allclose(centred[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_k3_is_zero_at_the_reference_positive_elsewhere_and_estimates_the_kl():
    lp = torch.log(torch.tensor([0.2, 0.5, 0.9]))
    assert torch.allclose(k3_kl(lp, lp), torch.zeros(3))
    assert (k3_kl(lp, lp - 0.3) > 0).all() and (k3_kl(lp, lp + 0.3) > 0).all()
    # sampled from p, the mean of k3 is KL(p || q): two categorical distributions, exactly enumerated
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    expected = (p * (p / q).log()).sum()
    assert torch.allclose((p * k3_kl(p.log(), q.log())).sum(), expected, atol=1e-6)


def test_the_reward_mix_weighs_checker_model_and_format():
    passed, stopped = np.array([True, False, True]), np.array([True, True, False])
    assert mixed(RewardMix(), passed, stopped, None).tolist() == [1.0, 0.0, 1.0]
    mix = RewardMix(checker=1.0, model=0.5, format=0.25)
    assert mixed(mix, passed, stopped, np.array([2.0, -2.0, 0.0])).tolist() == [2.25, -0.75, 1.0]
    with pytest.raises(ValueError, match="no scores"):
        mixed(RewardMix(model=1.0), passed, stopped, None)


def test_a_reward_mix_that_sums_to_zero_is_refused_naming_the_field():
    from pipelines.config import from_dict

    with pytest.raises(ValidationError, match="sum to zero"):
        RewardMix(checker=0.0)
    with pytest.raises(Exception) as caught:
        from_dict({"pipeline": {"name": "t", "alignment": "grpo"}, "grpo": {"rewards": {"checker": 0}}})
    assert "grpo.rewards" in str(caught.value) and "sum to zero" in str(caught.value)
