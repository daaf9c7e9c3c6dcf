"""quantize: int8 and 4-bit weight-only variants of the aligned model (torchao), a Q8_0
GGUF file for llama.cpp, each variant measured against the unquantized model on the same
held-out data, and the smallest one within the config's budgets registered as
``lmforge-<cfg>-lm@latest-quantized``.

The stage's declarations; what it does is in ``variants.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.quantize.config import QuantizeConfig


class QuantizeStage(Stage[QuantizeConfig]):
    name = "quantize"
    config_model = QuantizeConfig
    summary = "int8 / int4 / GGUF variants, measured (perplexity, pass rate, latency); the best one registered."
    figures = (Figure("*.perplexity_delta", "lower", key=True), Figure("*.pass_rate_delta", "higher", key=True),
               Figure("*.size_ratio", "lower", key=True), Figure("*.latency_ms_per_token_b1", "lower", key=True),
               Figure("*.latency_ms_per_token_*", "lower"), Figure("*.perplexity", "lower"),
               Figure("*.pass_rate", "higher"), Figure("*.bytes", "lower"),
               # lm-evaluation-harness, per variant: the checker tasks and the held-out perplexity task
               Figure("*.lm_eval.*.pass", "higher"), Figure("*.lm_eval.humaneval.pass_at_1", "higher"),
               Figure("*.lm_eval.heldout_ppl.*", "lower"))
    model_kinds = ("lm",)
    dashboard = Dashboard(panels=("quantization", "lmeval"))
    inputs = {"model": "ppo|dpo|grpo:model", "tokens": "tokenize:tokens", "prompts": "align_data:sft_heldout"}
    registered_defaults = {"model": ("lm", names.latest_of("ppo"))}

    def run(self, ctx: StageContext[QuantizeConfig]) -> StageResult:
        from stages.quantize.variants import QuantizeVariants

        return QuantizeVariants().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.quantize.variants import QuantizeVariants

        return QuantizeVariants().after_logged(tracker, run_id, output_dir, result, pipeline_name)
