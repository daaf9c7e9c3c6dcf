"""ppo's config: rollouts, the PPO update, the KL penalty, and the CPU share of each of
the four Ray actors (policy, critic, reference, reward)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.alignment.config import GenerationConfig
from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig


class RolloutConfig(StrictModel):
    batch_size: int = Field(32, ge=1, description="Prompts per PPO step (one answer each).")
    max_new_tokens: int = Field(24, ge=1, description="Response length limit; an answer without <|end|> is cut here.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    missing_eos_penalty: float = Field(1.0, ge=0, description="Subtracted from the score of an answer cut at the limit.")


class KLConfig(StrictModel):
    coef: float = Field(0.05, ge=0, description="Per-token KL penalty against the frozen SFT reference.")
    adaptive: bool = Field(False, description="Ziegler et al.'s controller: move coef toward target KL.")
    target: float = Field(1.0, gt=0, description="Target KL per answer (nats) when adaptive.")
    horizon: int = Field(2000, gt=0, description="Controller horizon (answers).")


class ActorResources(StrictModel):
    """Fractional CPUs of each role; each actor sets torch threads to max(1, floor(num_cpus))."""

    policy: float = Field(1.0, gt=0)
    critic: float = Field(0.5, gt=0)
    reference: float = Field(0.25, gt=0)
    reward: float = Field(0.25, gt=0)


class PPOEvalConfig(GenerationConfig):
    kl_samples: int = Field(1, ge=1, description="Sampled answers per held-out prompt for the KL-to-SFT estimate.")


class PPOConfig(StageConfig):
    steps: int = Field(60, ge=1, description="PPO steps (rollout batch + update).")
    families: Optional[list[str]] = Field(None, description="Train on prompts of these families only; null = all "
                                                             "checkable ones (evaluation always covers all).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    mini_batch_size: int = Field(16, ge=1, description="Answers per gradient step.")
    policy_lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(5e-4, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    clip_ratio: float = Field(0.2, gt=0, description="PPO policy ratio clip.")
    value_clip: float = Field(0.2, gt=0, description="Critic prediction clip around the rollout's values.")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_advantages: bool = Field(True)
    kl: KLConfig = Field(default_factory=KLConfig)
    critic_init: Literal["reward", "sft"] = Field("reward", description="Critic backbone and head: the reward model, "
                                                                        "or SFT with a fresh value head.")
    actors: ActorResources = Field(default_factory=ActorResources)
    log_every: int = Field(1, ge=1)
    eval: PPOEvalConfig = Field(default_factory=PPOEvalConfig)
