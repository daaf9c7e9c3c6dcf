"""What the quantize stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from stages.core import names
from stages.alignment import harness
from stages.alignment.data import read_rows
from stages.alignment.evaluate import checkable
from stages.alignment.generate import load_policy
from stages.alignment.trainer import copy_tokenizer_files
from stages.core.contract import StageContext, StageResult
from stages.core.tracking import register_artifact
from stages.quantize import evaluate as ev_
from stages.quantize.config import QuantizeConfig
from stages.quantize.gguf_export import export_q8_0, load_weights, read_back
from stages.quantize.storage import load_variant, save_variant, weight_bytes

TABLE = "variants.json"
PLOT = "tradeoff.png"
GGUF_FILE = "model-q8_0.gguf"
GGUF_VARIANT = "gguf-q8_0"
UNQUANTIZED = "fp32"


HARNESS_DIR = "lm_eval_tasks"


def tradeoff_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row.get("perplexity_delta") is None:
            continue
        ax.scatter(row["bytes"] / 1e6, 100 * row["perplexity_delta"], s=60)
        ax.annotate(row["variant"], (row["bytes"] / 1e6, 100 * row["perplexity_delta"]),
                    textcoords="offset points", xytext=(6, 4))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("weights on disk (MB)")
    ax.set_ylabel("validation perplexity change (%)")
    ax.set_title("quantization trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class QuantizeVariants:
    """What QuantizeStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[QuantizeConfig]) -> StageResult:
        cfg = ctx.config
        ev = cfg.eval
        source = Path(ctx.inputs["model"].path)
        out = ctx.output_dir
        torch.set_num_threads(ev.threads)
        rows_eval = checkable(read_rows(ctx.inputs["prompts"].path), ev.heldout_per_family)
        base_model, tokenizer = load_policy(source, ev.threads)
        prompts = [r["prompt_text"] for r in rows_eval[:8]] or ["<|user|>\nHello<|end|>\n<|assistant|>\n"]

        tasks = self._harness_tasks(ctx, rows_eval, tokenizer) if cfg.lm_eval.enabled else []

        def measure(name: str, model, size: int, timed: bool = True, folder: Path | None = None) -> dict:
            model.eval()
            rates, _ = ev_.checker_pass_rate(model, tokenizer, rows_eval, ev, ctx.seed)
            row = {"variant": name, "bytes": size, "perplexity": ev_.perplexity(model, ctx.inputs["tokens"].path,
                                                                               ev.perplexity_sequences),
                   "pass_rate": rates.get("pass_rate", 0.0)}
            for batch in ev.latency_batches if timed else ():
                row[f"latency_ms_per_token_b{batch}"] = 1000 * ev_.latency_per_token(
                    model, tokenizer, prompts, batch, ev.latency_new_tokens, ev.latency_repeats)
            if tasks and folder is not None:  # lm-eval loads the folder itself, as any user of the harness would
                figures = harness.evaluate(folder, out / HARNESS_DIR, tasks, batch_size=cfg.lm_eval.batch_size)
                row.update({f"lm_eval.{k}": v for k, v in figures.items() if not k.endswith(("_stderr", "sample_len"))})
                torch.set_num_threads(ev.threads)  # lm-eval's model load may have changed it
            ctx.log.info("quantize: %s %.2f MB, perplexity %.3f, pass rate %.3f%s", name, size / 1e6,
                         row["perplexity"], row["pass_rate"],
                         "".join(f", {row[f'latency_ms_per_token_b{b}']:.2f} ms/token at batch {b}"
                                 for b in ev.latency_batches if timed))
            return row

        table = [measure(UNQUANTIZED, base_model, weight_bytes(source), folder=source)]
        base = table[0]
        for variant in cfg.variants:
            save_variant(source, out / variant, variant, cfg.group_size)
            copy_tokenizer_files(source, out / variant)
            reloaded = load_variant(out / variant)  # measured as deploy (vLLM) loads it: the saved folder
            table.append(measure(variant, reloaded, weight_bytes(out / variant), folder=out / variant))
        gguf_figures = {}
        if cfg.gguf:
            counts = export_q8_0(source, out / GGUF_FILE, f"lmforge-{ctx.pipeline_name or 'model'}")
            size = ev_.directory_bytes(out / GGUF_FILE)
            fields = read_back(out / GGUF_FILE)["fields"]
            gguf_figures = {"bytes": size, "size_ratio": size / base["bytes"], "tensor_types": counts,
                            "architecture": fields.get("general.architecture")}
            model, _ = load_policy(source, ev.threads)
            load_weights(out / GGUF_FILE, model)  # the file's Q8_0 weights, dequantized as llama.cpp does
            table.append({**measure(GGUF_VARIANT, model, size, timed=False),
                          "note": "the file's weights evaluated in torch; llama.cpp's speed: bench/gguf_bench.py"})
        for row in table:
            row["size_ratio"] = row["bytes"] / base["bytes"]
            row["perplexity_delta"] = ev_.relative(row["perplexity"], base["perplexity"])
            row["pass_rate_delta"] = row["pass_rate"] - base["pass_rate"]
        # deploy serves torch folders: the GGUF file is measured, not a candidate
        chosen, why = ev_.choose([r for r in table if r["variant"] != GGUF_VARIANT], cfg.choose.max_perplexity_increase,
                                 cfg.choose.max_pass_rate_drop, cfg.choose.max_latency_ratio)
        if chosen["variant"] == UNQUANTIZED:
            shutil.copytree(source, out / UNQUANTIZED)
        (out / TABLE).write_text(json.dumps({"variants": table, "chosen": chosen["variant"], "why": why}, indent=2))
        tradeoff_plot(table, out / PLOT)

        metrics: dict[str, float] = {}
        for row in table:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics[f"{row['variant']}.{key}"] = float(value)
        ctx.log.info("quantize: chose %s (%.2fx the size, perplexity %+.2f%%, pass rate %+.3f): %s", chosen["variant"],
                     chosen["size_ratio"], 100 * chosen["perplexity_delta"], chosen["pass_rate_delta"], why)
        outputs = {variant: f"{variant}/" for variant in cfg.variants}
        if chosen["variant"] == UNQUANTIZED:
            outputs[UNQUANTIZED] = f"{UNQUANTIZED}/"
        outputs.update(table=TABLE, plot=PLOT, chosen=f"{chosen['variant']}/")
        if cfg.gguf:
            outputs["gguf"] = GGUF_FILE
        return StageResult(counts={"variants": len(table), "heldout_prompts": len(rows_eval)}, metrics=metrics,
                           details={"variants": table, "chosen": chosen["variant"], "why": why, "gguf": gguf_figures},
                           outputs=outputs)

    @staticmethod
    def _harness_tasks(ctx, rows_eval, tokenizer) -> list[str]:
        """lm-eval task files for this run: the held-out prompts by family, and validation documents decoded from
        tokenize's val split (the cleaned corpus the perplexity figure above reads too)."""
        from stages.tokenize.chat import end_of_turn
        from stages.tokenize.packed import PackedDataset

        cfg = ctx.config
        documents = []
        if cfg.lm_eval.documents:
            val = PackedDataset(ctx.inputs["tokens"].path, "val")
            for i in range(min(cfg.lm_eval.documents, len(val))):
                seq = val.sequence(i)
                ids = seq["input_ids"][seq["real"].astype(bool)] if "real" in seq else seq["input_ids"]
                text = tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
                if text:
                    documents.append(text)
        tasks = harness.write_tasks(ctx.output_dir / HARNESS_DIR, rows_eval, documents, end_of_turn(tokenizer),
                                    cfg.eval.max_new_tokens)
        if cfg.lm_eval.humaneval:
            from stages.alignment.humaneval import load_problems

            tasks.append(harness.write_humaneval_task(ctx.output_dir / HARNESS_DIR,
                                                      load_problems(limit=cfg.lm_eval.humaneval),
                                                      cfg.lm_eval.humaneval_max_tokens))
        return tasks

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        chosen = result.details["chosen"]
        name = names.registered_model(pipeline_name, "lm")
        version = register_artifact(tracker, name, run_id, chosen, names.LATEST_QUANTIZED)
        return {names.TAG_REGISTERED_MODEL: f"{name}/{version}", names.TAG_QUANTIZED_VARIANT: chosen,
                names.TAG_CHOICE: result.details["why"][:500]}
