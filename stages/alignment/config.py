"""Config pieces every alignment stage shares: training (batch, steps, optimizer,
distribution; the same optimizer and distribution models as pretraining) and the
generation used to evaluate policies."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from stages.alignment.lora import LoraSettings
from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig
from stages.pretrain.config import DistributedConfig, OptimConfig


class GenerationConfig(StrictModel):
    max_new_tokens: int = Field(40, ge=1, description="Response length limit (tokens).")
    batch_size: int = Field(64, ge=1, description="Prompts generated together (KV cache, left padding).")
    heldout_per_family: Optional[int] = Field(None, ge=1, description="Held-out prompts scored per family; null = all.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for confidence intervals.")
    samples_logged: int = Field(5, ge=0, description="Sample generations per family in the MLflow table.")


class AlignOptimConfig(OptimConfig):
    """Fine-tuning defaults: a lower peak and a short warmup (a subclass, not a factory, so
    that ``--set sft.optim.lr=...`` keeps the other fine-tuning defaults)."""

    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class AlignTrainConfig(StageConfig):
    optim: AlignOptimConfig = Field(default_factory=AlignOptimConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    global_batch_size: int = Field(32, ge=1, description="Examples (or pairs) per optimizer step, across ranks.")
    micro_batch_size: int = Field(16, ge=1, description="Examples (or pairs) per forward pass on one rank.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set (when max_steps is null).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps; null = from epochs.")
    max_seq_len: int = Field(160, ge=8, description="Longest prompt + response (tokens); longer ones are cut.")
    eval_every: int = Field(100, ge=1, description="Held-out loss every N steps (and at the end).")
    log_every: int = Field(10, ge=1)
    ema_decay: Optional[float] = Field(
        None, gt=0, lt=1, description="Save an exponential moving average of the weights (this decay per "
        "optimizer step, fp32) instead of the last ones; null = off. Not with ZeRO-3 (sharded weights).")

    checkpoint_every: Optional[int] = Field(
        None, ge=1, description="Save a resumable state every N steps (a killed or restarted run goes on from the "
                                "newest); null = none, a killed run starts over.")
    lora: Optional[LoraSettings] = Field(
        None, description="Train LoRA adapters (peft) instead of every weight; the merged model is what is saved. "
                          "null = full fine-tuning.")

    @model_validator(mode="after")
    def _lora_needs_whole_weights(self):
        if self.lora is not None and self.distributed.zero_stage == 3:
            raise ValueError("lora merges its adapters into whole weights at the end: use distributed.zero_stage <= 2 "
                             "(the frozen base is small beside full fine-tuning's optimizer state anyway)")
        return self

    @model_validator(mode="after")
    def _ema_needs_whole_weights(self):
        if self.ema_decay is not None and self.distributed.zero_stage == 3:
            raise ValueError("ema_decay needs every rank to hold the whole weights: use distributed.zero_stage <= 2 "
                             "or ema_decay: null")
        return self
