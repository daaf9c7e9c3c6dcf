"""align_data's config: which task families, how many examples and pairs, the held-out
share and the decontamination window."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from stages.align_data.tasks import FAMILIES
from stages.core.contract import StageConfig


class AlignDataConfig(StageConfig):
    data_dir: Optional[str] = Field(None, description="Fetched raw data (infra/fetch_data.sh); null = "
                                                      "$LMFORGE_DATA_DIR/raw.")
    families: list[str] = Field(default_factory=lambda: sorted(FAMILIES),
                                description=f"Checkable task families; allowed: {', '.join(sorted(FAMILIES))}.")
    train_per_family: int = Field(1500, ge=1, description="SFT training examples per family.")
    heldout_per_family: int = Field(150, ge=1, description="Held-out prompts per family (before decontamination).")
    qa_train: int = Field(3000, ge=0, description="Real question/answer pairs (chatterbot, movie dialog, GCIDE) for SFT.")
    qa_heldout: int = Field(150, ge=0)
    pairs_per_family: int = Field(600, ge=0, description="Training preference pairs per family.")
    heldout_pairs_per_family: int = Field(100, ge=0)
    wrong_task_share: float = Field(0.25, ge=0, le=1, description="Share of rejected answers that answer another "
                                                                   "family's task (an answer that does not fit).")
    label_rejects: int = Field(1, ge=1, description="Preference pairs per example of a label family (language, "
                                                    "question_type), each rejecting another wrong label (training "
                                                    "pairs; held-out keeps one per example).")
    sentiment_min_gap: float = Field(1.0, gt=0, description="Human-rating gap between the two snippets of a pair.")
    heldout_fraction: float = Field(0.15, gt=0, lt=1, description="Share of source sentences held out (by sentence).")
    decontam_tokens: int = Field(10, ge=2, description="Held-out sentences sharing any window of this many tokens "
                                                       "(or the whole sentence, if shorter) with pretraining's "
                                                       "train split are dropped.")
    max_prompt_tokens: int = Field(96, ge=8)
    max_response_tokens: int = Field(40, ge=2)

    @field_validator("families")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in FAMILIES]
        if unknown or not value:
            raise ValueError(f"unknown families {unknown}; allowed: {', '.join(sorted(FAMILIES))}")
        return value
