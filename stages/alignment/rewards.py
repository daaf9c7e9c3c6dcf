"""The reward an RL stage optimizes: the checkers' verdict (a verifiable reward, DeepSeek-R1's
and veRL's function rewards), the learned reward model's score, and a format term, mixed
with weights. A checker cannot be fooled the way a learned reward can, and it judges families
a small reward model cannot (counting words); the reward model judges what no checker can.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from stages.core.configuration import StrictModel


class RewardMix(StrictModel):
    checker: float = Field(1.0, ge=0, description="Weight of the checker's verdict: 1 for a right answer, 0 else.")
    model: float = Field(0.0, ge=0, description="Weight of the reward model's score (needs the reward stage).")
    format: float = Field(0.0, ge=0, description="Weight of the format term: 1 when the answer ends with the chat "
                                                 "template's end of turn within the length limit, 0 when it is cut.")

    @model_validator(mode="after")
    def _something_is_rewarded(self):
        if self.checker + self.model + self.format <= 0:
            raise ValueError("the weights sum to zero: every answer would get the same reward; give checker, model "
                             "or format a positive weight")
        return self


def mixed(mix: RewardMix, passed: np.ndarray, stopped: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """Each answer's reward under ``mix`` (``scores``: the reward model's, needed when ``mix.model`` > 0)."""
    reward = mix.checker * passed.astype(np.float64) + mix.format * stopped.astype(np.float64)
    if mix.model:
        if scores is None:
            raise ValueError("the reward mix weighs the reward model, but no scores were given")
        reward = reward + mix.model * np.asarray(scores, dtype=np.float64)
    return reward
