"""reward's config: the shared alignment training fields plus how the reward model is
checked against the checkers on sampled answers."""

from __future__ import annotations

from pydantic import Field, model_validator

from stages.alignment.config import AlignTrainConfig, GenerationConfig
from stages.core.configuration import StrictModel


class RewardGenerationConfig(GenerationConfig):
    heldout_per_family: int | None = Field(60, ge=1, description="Held-out prompts sampled per family; null = all.")


class RewardEvalConfig(StrictModel):
    samples_per_prompt: int = Field(2, ge=1, description="Answers sampled from the SFT model per held-out prompt.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    generation: RewardGenerationConfig = Field(default_factory=RewardGenerationConfig)


class OnPolicyPairsConfig(StrictModel):
    """Pairs from the SFT model's own answers: a sampled answer the checker refuses is the
    rejected side, an accepted one (or the reference) the chosen one, so the reward model
    learns to rank the answers PPO's policy actually gives."""

    prompts: int = Field(1500, ge=0, description="Training prompts answered by the SFT model (0 = off).")
    samples_per_prompt: int = Field(4, ge=1, description="Answers sampled per prompt.")
    max_pairs_per_prompt: int = Field(2, ge=1, description="Refused answers paired with an accepted one, per prompt.")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(64, ge=1)


class AccuracyGoal(StrictModel):
    """The held-out pair accuracy the reward model should reach on the families it can judge. On the 1.9M
    demo model those are language and question_type: its backbone cannot count or find a word by position, and
    its sentiment head collapsed to one side, so count_words, nth_word and sentiment are reported per family
    with their intervals but not held to the goal. A real base model (finetune.yaml) is held to it on all."""

    families: list[str] = Field(default_factory=lambda: ["language", "question_type"])
    min_accuracy: float = Field(0.8, gt=0, le=1)


class RewardConfig(AlignTrainConfig):
    epochs: float = Field(2.0, gt=0, description="Passes over the training pairs (when max_steps is null).")
    on_policy: OnPolicyPairsConfig = Field(default_factory=OnPolicyPairsConfig)
    lm_coef: float = Field(
        0.0, ge=0, description="Weight of the chosen answers' next-token loss through the backbone's tied LM head, "
        "added to the Bradley-Terry loss (GRM, Yang et al. 2024): the backbone keeps the skills SFT gave it "
        "while the head learns to rank. 0 = off. Not with ZeRO-3 (the head's weights are sharded).")
    eval: RewardEvalConfig = Field(default_factory=RewardEvalConfig)
    accuracy_goal: AccuracyGoal = Field(default_factory=AccuracyGoal)

    @model_validator(mode="after")
    def _lm_head_needs_whole_weights(self):
        if self.lm_coef and self.distributed.zero_stage == 3:
            raise ValueError("lm_coef reads the tied embedding outside the forward pass: use "
                             "distributed.zero_stage <= 2 or lm_coef: 0")
        return self
