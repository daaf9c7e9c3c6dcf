"""The losses of the alignment stages, as plain functions of tensors (unit-tested on
known values): response-only token log-probs, Bradley-Terry for the reward model and its
language-model regulariser, DPO, and PPO's pieces (KL-shaped rewards, GAE, clipped policy and value losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1; shape [B, T-1] (position t-1 holds token t)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logprob(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the response tokens' log-probs per row (``response_mask`` marks them, [B, T])."""
    return (token_logprobs(logits, input_ids) * response_mask[:, 1:]).sum(-1)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected): the pairwise likelihood of the human (or checker) preference."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): the implicit reward margin through log-sigmoid.
    Returns the loss and each pair's implicit reward margin (for accuracy)."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()


def chosen_nll(chosen_logprob: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen answers, averaged over pairs: the
    term RPO (Pang et al. 2024; TRL's ``rpo_alpha``) adds to DPO so that pushing the
    rejected answer down does not drag the chosen one down with it."""
    return -(chosen_logprob / chosen_tokens.clamp(min=1)).mean()


def tied_head_nll(hidden: torch.Tensor, embedding: torch.Tensor, input_ids: torch.Tensor,
                  response_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of the response tokens, from a backbone's final hidden states
    ([B, T, d]) through its tied embedding ([V, d]) as the LM head. Only response positions
    are projected, so the vocabulary-sized matmul costs a few tokens per row."""
    mask = response_mask[:, 1:] > 0  # position t-1 predicts token t
    logits = hidden[:, :-1][mask] @ embedding.t()
    return F.cross_entropy(logits.float(), input_ids[:, 1:][mask])


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def shaped_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                   kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: -kl_coef * (log pi - log ref) on every response token, plus the
    reward model's score on the last one. Returns (rewards, per-token KL estimate)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    # index of each row's last response token (the mask may start anywhere: prompts differ in length)
    last = mask.size(1) - 1 - mask.flip(1).argmax(1)
    rows = torch.arange(score.size(0))
    rewards[rows, last] += score * (mask.sum(1) > 0)
    return rewards, kl


def leave_one_out(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Each score minus the mean of the other scores of its group (consecutive rows of ``group``
    answers to one prompt): an unbiased per-prompt baseline (RLOO)."""
    if group <= 1:
        return scores
    grouped = scores.view(-1, group)
    others = (grouped.sum(1, keepdim=True) - grouped) / (group - 1)
    return (grouped - others).reshape(scores.shape)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens (right-padded mask).
    Returns (advantages, returns = advantages + values)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), dtype=rewards.dtype)
    steps = rewards.size(1)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * (mask[:, t + 1] if t + 1 < steps else 0.0)
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate. Returns (loss, clip fraction, approx KL old->new)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
    return loss, clip_frac.detach(), approx_kl.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """Clipped value loss: the worse of the raw and the clipped-to-old prediction."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage (DeepSeekMath, Shao et al. 2024): each answer's reward minus the mean of its
    prompt's ``group`` answers (adjacent rows), divided by their standard deviation when ``scale`` (Dr. GRPO,
    Liu et al. 2025, leaves it out: it up-weights prompts whose answers barely differ). A group whose answers
    all scored the same gets 0: there is nothing to learn from it."""
    grouped = rewards.reshape(-1, group)
    centered = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(1, keepdim=True, unbiased=False) + eps)
    return centered.reshape(rewards.shape)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) by Schulman's k3 estimator, exp(r) - r - 1 with r = ref - policy
    log-prob of the sampled token: unbiased, never negative, and differentiable in the policy (GRPO's choice)."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1
