"""Weight-only quantization with torchao, stored so the file really is low precision.

torchao quantizes in place (``quantize_``) and its tensors flatten into plain inner
tensors (``__tensor_flatten__``): int8 data, scales, zero points. We write those inner
tensors with safetensors and rebuild the same tensor classes on load, so a quantized
model needs neither pickle nor a re-quantization pass. torchao keeps int4 values
unpacked, one per int8 byte (``IntxUnpackedToInt8Tensor``); we pack two per byte on disk,
which is what makes the 4-bit file about half the int8 one.

Embeddings are quantized too (at this size the 8192 x 128 embedding is half the model);
a tied LM head is untied first, each copy quantized on its own.
"""

from __future__ import annotations

from stages.core import names

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = "quantized.safetensors"
METADATA_KEY = names.TAG_QUANTIZED
VARIANTS = ("int8", "int4")


def _configs(variant: str, group_size: int):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if variant == "int8":  # per-channel int8 for linear layers, per-row int8 for the embedding
        return Int8WeightOnlyConfig(), IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if variant == "int4":  # grouped symmetric int4 (torchao's CPU path: Int4WeightOnlyConfig needs a GPU kernel)
        config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
        return config, config
    raise ValueError(f"unknown variant '{variant}'; allowed: {', '.join(VARIANTS)}")


def untie_lm_head(model) -> None:
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embedding.weight:
        head.weight = nn.Parameter(embedding.weight.detach().clone())
    model.config.tie_word_embeddings = False


def quantize_model(model, variant: str, group_size: int = 32):
    """Quantize ``model``'s linear layers and embeddings in place; returns it."""
    from torchao.quantization import quantize_

    linear_config, embedding_config = _configs(variant, group_size)
    untie_lm_head(model)
    quantize_(model, embedding_config, filter_fn=lambda module, fqn: isinstance(module, nn.Embedding))
    quantize_(model, linear_config)
    return model


def _encode(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the quantized file's metadata")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "dtype" in value:
            return getattr(torch, value["dtype"])
        if "tuple" in value:
            return tuple(_decode(v) for v in value["tuple"])
        return {k: _decode(v) for k, v in value["dict"].items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int8 tensor of values in [-8, 7] -> uint8 tensor of half the length (two per byte)."""
    flat = (values.reshape(-1).to(torch.int16) & 0xF).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    low, high = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    flat = torch.stack([low, high], dim=1).reshape(-1)[: int(torch.Size(shape).numel())]
    return torch.where(flat > 7, flat - 16, flat).to(torch.int8).reshape(shape)


def save_quantized(model, out_dir: Path, variant: str) -> None:
    """config.json (untied) and ``quantized.safetensors`` with each torchao tensor's parts."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(out_dir))
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        if type(value) is torch.Tensor or isinstance(value, nn.Parameter) and type(value.data) is torch.Tensor:
            tensors[name] = value.detach().contiguous()
            continue
        parts, context = value.__tensor_flatten__()
        entry = {"class": f"{type(value).__module__}:{type(value).__qualname__}", "context": _encode(context),
                 "shape": list(value.shape), "stride": list(value.stride()), "parts": {}}
        for part in parts:
            inner = getattr(value, part)
            if part == "qdata" and context.get("target_dtype") == torch.int4:
                tensors[f"{name}.{part}"] = pack_int4(inner)
                entry["parts"][part] = {"packed_int4": list(inner.shape)}
            else:
                tensors[f"{name}.{part}"] = inner.contiguous()
                entry["parts"][part] = {}
        layout[name] = entry
    save_file(tensors, str(out_dir / WEIGHTS), metadata={METADATA_KEY: json.dumps({"variant": variant,
                                                                                    "tensors": layout})})


def read_layout(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


def load_quantized(model_dir: Path):
    """The model ``save_quantized`` wrote, with the same torchao tensor classes."""
    import importlib

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    layout = read_layout(model_dir / WEIGHTS)
    stored = load_file(str(model_dir / WEIGHTS))
    config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")  # buffers (rotary) built here
    state: dict[str, torch.Tensor] = {k: v for k, v in stored.items()
                                      if k.rpartition(".")[0] not in layout["tensors"]}
    for name, entry in layout["tensors"].items():
        module, _, cls_name = entry["class"].partition(":")
        cls = getattr(importlib.import_module(module), cls_name)
        inner = {}
        for part, how in entry["parts"].items():
            value = stored[f"{name}.{part}"]
            inner[part] = unpack_int4(value, tuple(how["packed_int4"])) if "packed_int4" in how else value
        state[name] = cls.__tensor_unflatten__(inner, _decode(entry["context"]), torch.Size(entry["shape"]),
                                               tuple(entry["stride"]))
    model.load_state_dict(state, assign=True, strict=True)
    model.eval()
    return model
