"""pretrain's config: the model (a named size or explicit dimensions), the optimizer and
schedule, batch in tokens, evaluation, checkpoints and how the work is distributed."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig

# Llama-architecture sizes. "cpu-tiny" trains on 2 CPU cores in minutes; the GPU sizes
# are the documented path to ~1B parameters with DeepSpeed ZeRO (bench/pretrain_gpu.py).
# Every head size is one vLLM has a CPU attention kernel for (32 and up), so every preset serves.
PRESETS: dict[str, dict[str, int]] = {
    "cpu-tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=384),
    "cpu-small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=768),
    "cpu-micro": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=192),
    "gpu-125m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
    "gpu-350m": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=2816),
    "gpu-1b": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=5632),
}


class ModelConfig(StrictModel):
    preset: Literal["cpu-tiny", "cpu-small", "cpu-micro", "gpu-125m", "gpu-350m", "gpu-1b", "custom"] = Field(
        "cpu-tiny", description="A named size; 'custom' uses the fields below.")
    hidden_size: Optional[int] = Field(None, ge=8, description="Overrides the preset.")
    num_layers: Optional[int] = Field(None, ge=1)
    num_heads: Optional[int] = Field(None, ge=1)
    num_kv_heads: Optional[int] = Field(None, ge=1, description="Grouped-query attention when below num_heads.")
    intermediate_size: Optional[int] = Field(None, ge=8)
    rope_theta: float = Field(10_000.0, gt=0)
    tie_embeddings: bool = Field(True, description="Share input and output embeddings (saves parameters when small).")
    dropout: float = Field(0.0, ge=0, lt=1)

    def dims(self) -> dict[str, int]:
        base = dict(PRESETS.get(self.preset, PRESETS["cpu-tiny"]))
        for key in base:
            value = getattr(self, key)
            if value is not None:
                base[key] = value
        return base

    @model_validator(mode="after")
    def _heads_divide(self):
        d = self.dims()
        if d["hidden_size"] % d["num_heads"]:
            raise ValueError(f"model.hidden_size ({d['hidden_size']}) must be a multiple of model.num_heads "
                             f"({d['num_heads']})")
        if d["num_heads"] % d["num_kv_heads"]:
            raise ValueError(f"model.num_heads ({d['num_heads']}) must be a multiple of model.num_kv_heads "
                             f"({d['num_kv_heads']})")
        return self


class OptimConfig(StrictModel):
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr * this.")
    warmup_steps: int = Field(40, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")


class DistributedConfig(StrictModel):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks).")
    cpus_per_worker: float = Field(2.0, gt=0, description="CPUs each worker reserves (and torch threads it uses).")
    use_gpu: Literal["auto", "yes", "no"] = Field("auto", description="auto: one GPU per worker when the cluster has them.")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state in CPU memory (GPU runs).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers; STRICT_SPREAD puts each on its own node.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts (from the latest checkpoint) before failing.")


class PretrainConfig(StageConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    global_batch_tokens: int = Field(4096, ge=1, description="Tokens per optimizer step, across all ranks.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward pass on one rank.")
    max_steps: int = Field(400, ge=1, description="Optimizer steps.")
    document_mask: bool = Field(True, description="Reset positions and keep attention inside each document.")
    eval_every: int = Field(100, ge=1, description="Validation loss every N steps (and at the end).")
    eval_sequences: int = Field(256, ge=1, description="Validation sequences per evaluation (at most the split).")
    checkpoint_every: int = Field(100, ge=1, description="Checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="Step metrics every N steps.")
    peak_tflops: Optional[float] = Field(None, gt=0, description="Peak per worker for MFU; null = measured (CPU) or "
                                                               "the card's bf16 peak (GPU).")
