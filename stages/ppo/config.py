"""ppo's config: rollouts, the PPO update, the KL penalty, and the CPU share of each of
the four Ray actors (policy, critic, reference, reward)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.alignment.config import GenerationConfig
from stages.alignment.lora import LoraSettings
from stages.alignment.rewards import RewardMix
from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig


class RolloutConfig(StrictModel):
    batch_size: int = Field(32, ge=1, description="Prompts per PPO step.")
    samples_per_prompt: int = Field(1, ge=1, description="Answers sampled per prompt; with more than one, each "
                                                         "answer's score is taken relative to the others' "
                                                         "(see leave_one_out_baseline).")
    leave_one_out_baseline: bool = Field(True, description="With samples_per_prompt > 1, subtract the mean score of "
                                                           "the prompt's other answers from each answer's score "
                                                           "(RLOO, Ahmadian et al. 2024) before the KL shaping: "
                                                           "the update then ranks answers to the same prompt "
                                                           "instead of chasing prompts that score high anyway.")
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
    """Greedy answers give the pass rate and mean reward; sampled answers (what a user who
    samples gets, and what PPO optimizes) give the sampled pass rate and reward, and the KL to SFT."""

    samples_per_prompt: int = Field(2, ge=1, description="Answers sampled per held-out prompt (sampled pass rate, "
                                                         "sampled reward, KL to SFT).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of those answers (PPO: set it to the "
                                                      "rollout temperature to measure what PPO optimized).")


class PPOConfig(StageConfig):
    steps: int = Field(60, ge=1, description="PPO steps (rollout batch + update).")
    families: Optional[list[str]] = Field(None, description="Train on prompts of these families only; null = all "
                                                             "checkable ones (evaluation always covers all).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rollout_engine: Literal["vllm", "hf"] = Field(
        "vllm", description="What generates the rollouts in the policy's actor: vLLM in-process, the policy's weights "
                            "pushed into it after every update (OpenRLHF's colocate layout), or transformers' generate.")
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
    anchor_coef: float = Field(0.0, ge=0, description="Weight of KL(SFT || policy) on teacher-forced SFT examples of "
                                                      "the families PPO does not train on (all but ppo.families, QA "
                                                      "included), added to the policy loss. PPO's updates move shared "
                                                      "weights and so the other families' answers; this holds those "
                                                      "where SFT had them without training anything new (InstructGPT's "
                                                      "PPO-ptx guards pretraining skills the same way with an LM loss).")
    anchor_batch_size: int = Field(16, ge=1, description="Anchor examples per policy mini-batch.")
    critic_init: Literal["reward", "sft"] = Field("reward", description="Critic backbone and head: the reward model, "
                                                                        "or SFT with a fresh value head.")
    rewards: RewardMix = Field(default_factory=lambda: RewardMix(checker=0.0, model=1.0),
                               description="What each rollout answer's score is: the reward model's (the default), the "
                                           "checkers' verdict, a format term, or a weighted sum (as grpo.rewards).")
    lora: Optional[LoraSettings] = Field(None, description="Train the policy's LoRA adapters only (the critic stays "
                                                           "whole). null = every weight.")
    actors: ActorResources = Field(default_factory=ActorResources)
    log_every: int = Field(1, ge=1)
    eval: PPOEvalConfig = Field(default_factory=PPOEvalConfig)
