"""LoRA adapters (peft) for the alignment stages: a real base model (SmolLM2's 135M
parameters) is too large to fine-tune whole on a few CPU cores, and its users expect
adapters. Only the adapter trains; the reference model a KL needs is the same model with
its adapters switched off (``peft``'s ``disable_adapter``), not a second copy. What a stage
registers, quantizes and serves is the merged model; the adapter is kept beside it as an
artifact.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from pathlib import Path

from pydantic import Field

from stages.core.configuration import StrictModel
from stages.core.errors import ConfigError

ADAPTER_DIR = "adapter"
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is (alpha / r) * B @ A.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEAR), min_length=1,
                                      description="Names of the linear layers that get adapters (module name ends).")


def check_targets(model_dir: Path, settings: LoraSettings, field: str) -> None:
    """Every target module exists in this model: else a one-line error naming ``field``."""
    present = _module_names_of(str(model_dir))
    missing = [t for t in settings.target_modules if t not in present]
    if missing:
        linear = sorted(n for n in present if n.endswith("proj") or n in ("fc1", "fc2", "c_attn", "c_proj"))
        raise ConfigError(f"{field}: {missing} not found in the model at {model_dir}; its projection layers are "
                          f"{linear or sorted(present)[:12]}")


def wrap(model, settings: LoraSettings, kind: str):
    """``model`` with adapters on ``target_modules``; everything else frozen (a reward model's score head trains)."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if kind == "score" else TaskType.CAUSAL_LM
    config = LoraConfig(task_type=task, r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules))
    return get_peft_model(model, config)


def trainable(model) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def is_adapted(model) -> bool:
    return hasattr(model, "peft_config")


def reference(model):
    """A context in which ``model`` computes as its base (adapters off); a plain model as itself."""
    return model.disable_adapter() if is_adapted(model) else nullcontext()


def merged(model):
    """The plain transformers model with the adapters folded into its weights (what is saved and served)."""
    return model.merge_and_unload() if is_adapted(model) else model



def plain_state_dict(model) -> dict:
    """The weights as the plain model has them, adapters folded in, computed beside the live model (nothing is
    merged in place, so training goes on): what vLLM's rollout engine and the saved model receive."""
    if not is_adapted(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if "lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach()
            state[f"{name}.weight"] = weight
    return state


def base_module_names(config) -> set[str] | None:
    """The module names of the model the pipeline's alignment stages start from, known before anything runs:
    lmforge's own Llama when it pretrains, the imported folder's or GGUF's model otherwise (None when the import
    source is missing: import_model reports that itself)."""
    if getattr(config.pipeline, "base", "pretrain") == "pretrain":
        return _module_names_of(None)
    from stages.core.errors import ConfigError
    from stages.import_model.stage import source_of

    try:
        return _module_names_of(str(source_of(config.import_model)))
    except ConfigError:
        return None


@functools.lru_cache(maxsize=8)
def _module_names_of(source: str | None) -> frozenset[str]:
    """Module names of a model built on the meta device from ``source``'s config (None: lmforge's own Llama)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if source is None:
        model_config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                   vocab_size=32)
    else:
        path = Path(source)
        model_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name) if path.is_file() \
            else AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return frozenset(name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name)


def check_pipeline_targets(stage_cls, config) -> None:
    """A pipeline whose ``<stage>.lora`` names a module its base model lacks is refused before anything runs."""
    if not stage_cls.runs_under(config.pipeline):
        return  # the stage does not run in this pipeline
    settings = getattr(config, stage_cls.name).lora
    present = base_module_names(config) if settings is not None else None
    if present is None:
        return
    missing = [t for t in settings.target_modules if t not in present]
    if missing:
        raise ValueError(f"{stage_cls.name}.lora.target_modules: {missing} not found in the base model; its projection "
                         f"layers are {sorted(n for n in present if n.endswith('proj'))}")
