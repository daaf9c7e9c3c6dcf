"""grpo's config: groups of sampled answers per prompt, the reward mix, the clipped update
with its KL to the reference, and the CPU share of each Ray actor."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.alignment.lora import LoraSettings
from stages.alignment.rewards import RewardMix
from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig
from stages.ppo.config import PPOEvalConfig


class GRPOActors(StrictModel):
    policy: float = Field(1.5, gt=0, description="CPUs of the policy actor (generates and trains).")
    reference: float = Field(0.25, gt=0, description="CPUs of the reference actor (full fine-tuning only: a LoRA "
                                                     "policy is its own reference, adapters off).")
    reward: float = Field(0.25, gt=0, description="CPUs of the reward-model actor (when rewards.model > 0).")


class GRPOConfig(StageConfig):
    steps: int = Field(30, ge=1, description="GRPO steps (a batch of groups, then the update).")
    families: Optional[list[str]] = Field(None, description="Train on prompts of these families only; null = all "
                                                             "checkable ones (evaluation always covers all).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step.")
    group_size: int = Field(8, ge=2, description="Answers sampled per prompt (G): the advantage of each is its "
                                                 "reward against the group's.")
    max_new_tokens: int = Field(24, ge=1, description="Answer length limit; an answer cut here gets no format reward.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    rollout_engine: Literal["vllm", "hf"] = Field("vllm", description="What samples the groups: vLLM in the policy's "
                                                                      "actor (weights pushed after every update), or "
                                                                      "transformers' generate.")
    rewards: RewardMix = Field(default_factory=RewardMix)
    scale_rewards: bool = Field(True, description="Divide each group's centred rewards by their standard deviation "
                                                  "(GRPO); false: centre only (Dr. GRPO).")
    epochs: int = Field(1, ge=1, description="Passes over each step's answers (1: on-policy, the ratio stays 1 and "
                                             "the clip only guards numerical drift).")
    mini_batch_size: int = Field(16, ge=1, description="Answers per gradient step.")
    lr: float = Field(1e-4, gt=0, description="Policy learning rate (AdamW).")
    grad_clip: float = Field(1.0, ge=0)
    clip_ratio: float = Field(0.2, gt=0, description="Clip of the policy ratio.")
    kl_coef: float = Field(0.04, ge=0, description="Weight of the per-token KL to the reference (k3 estimator) in "
                                                   "the loss (DeepSeekMath's beta).")
    lora: Optional[LoraSettings] = Field(None, description="Train LoRA adapters only; the reference is the same "
                                                           "model with its adapters off. null = every weight.")
    actors: GRPOActors = Field(default_factory=GRPOActors)
    log_every: int = Field(1, ge=1)
    eval: PPOEvalConfig = Field(default_factory=PPOEvalConfig)
