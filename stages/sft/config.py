"""sft's config: the shared alignment training fields plus packing and the held-out
generation that measures checker pass rates."""

from __future__ import annotations

from pydantic import Field

from stages.alignment.config import AlignTrainConfig, GenerationConfig


class SFTConfig(AlignTrainConfig):
    packing: bool = Field(True, description="Pack several examples per row (positions restart per example).")
    eval_generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                              description="Greedy decoding of held-out prompts for the pass rate.")
