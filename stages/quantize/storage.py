"""Weight-only quantization with torchao, stored as transformers stores it, so vLLM serves it.

A variant is a transformers checkpoint whose ``config.json`` carries a ``TorchAoConfig``
(``quant_method: torchao``): ``from_pretrained`` quantizes while loading and
``save_pretrained`` writes the quantized tensors' parts to safetensors. vLLM loads the same
folder with ``quantization="torchao"`` (``stages/deploy/vllm_engine.py``), so what quantize
measures is what deploy serves, with no format of lmforge's own in between.

The linear layers are quantized (a tied LM head stays tied to the fp32 embedding). int4 is
torchao's grouped int4 (``IntxWeightOnlyConfig``; ``Int4WeightOnlyConfig`` needs a GPU kernel).
torchao keeps int4 values one per byte (``IntxUnpackedToInt8Tensor``), so on disk the int4
variant is about as large as int8: its gain is accuracy traded for nothing on CPU today, and
the table says so. The Q8_0 GGUF export is the compact file for llama.cpp users.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VARIANTS = ("int8", "int4")
QUANT_METHOD = "torchao"


def torchao_config(variant: str, group_size: int = 32):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    if variant == "int8":  # per-channel int8
        return TorchAoConfig(Int8WeightOnlyConfig())
    if variant == "int4":  # grouped symmetric int4
        return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))
    raise ValueError(f"unknown variant '{variant}'; allowed: {', '.join(VARIANTS)}")


def save_variant(source: Path, out_dir: Path, variant: str, group_size: int = 32):
    """Quantize ``source``'s model into ``out_dir`` (weights and config; tokenizer files are the caller's);
    returns the quantized model as loaded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32,
                                                 quantization_config=torchao_config(variant, group_size))
    model.save_pretrained(str(out_dir))
    return model.eval()


def is_variant(model_dir: Path) -> bool:
    """Whether the folder holds a torchao-quantized checkpoint (what vLLM needs ``quantization=torchao`` for)."""
    config = Path(model_dir) / "config.json"
    if not config.exists():
        return False
    quantization = json.loads(config.read_text()).get("quantization_config") or {}
    return quantization.get("quant_method") == QUANT_METHOD


def load_variant(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
