"""What the sft stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.core import names
from stages.alignment import launch
from stages.alignment.data import read_rows
from stages.alignment.evaluate import (EVAL_FILE, SAMPLES, checkable, family_gains, pass_rates, paired_difference, verdict,
                                       write_heldout)
from stages.alignment.generate import generate, load_policy
from stages.alignment.trainer import MODEL_DIR, TRAIN_LOG
from stages.core.contract import StageContext, StageResult
from stages.sft.config import SFTConfig



def evaluate_models(models: dict[str, Path], rows: list[dict], gen, seed: int, threads: int) -> dict[str, Any]:
    """Greedy answers of each model to the same held-out prompts, checker verdicts, pass rates."""
    prompts = [r["prompt_text"] for r in rows]
    answers, verdicts, figures = {}, {}, {}
    for name, folder in models.items():
        model, tokenizer = load_policy(folder, threads)
        outs = generate(model, tokenizer, prompts, gen.max_new_tokens, gen.batch_size)
        answers[name] = [o.text for o in outs]
        verdicts[name] = [verdict(r, o.text) for r, o in zip(rows, outs)]
        figures[name] = pass_rates(rows, verdicts[name], gen.bootstrap, seed)
        figures[name]["response_length"] = sum(len(o.response_ids) for o in outs) / max(1, len(outs))
    return {"answers": answers, "verdicts": verdicts, "figures": figures}


class SFTTrainer:
    """What SFTStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[SFTConfig]) -> StageResult:
        cfg = ctx.config
        base = ctx.inputs["model"].path
        history = launch.train(ctx, base, ctx.inputs["train"].path, ctx.inputs["heldout"].path)
        rows = checkable(read_rows(ctx.inputs["heldout"].path), cfg.eval_generation.heldout_per_family)
        threads = max(1, int(cfg.distributed.cpus_per_worker))
        result = evaluate_models({"base": base, "sft": ctx.output_dir / MODEL_DIR}, rows, cfg.eval_generation,
                                 ctx.seed, threads)
        write_heldout(ctx.output_dir, rows, result["answers"], result["verdicts"],
                      cfg.eval_generation.samples_logged)
        figures = result["figures"]
        metrics: dict[str, float] = {}
        for name, values in figures.items():
            metrics.update({f"{name}.{k}": v for k, v in values.items()})
        gain = paired_difference([float(v) for v in result["verdicts"]["sft"]],
                                 [float(v) for v in result["verdicts"]["base"]], cfg.eval_generation.bootstrap,
                                 ctx.seed)
        metrics.update({f"sft_minus_base.{k}": v for k, v in gain.items()})
        metrics.update({f"sft_minus_base.{k}": v for k, v in family_gains(
            rows, result["verdicts"]["sft"], result["verdicts"]["base"], cfg.eval_generation.bootstrap, ctx.seed).items()})
        evals = [h for h in history if "heldout_loss" in h]
        if evals:
            metrics["heldout_loss_start"] = evals[0]["heldout_loss"]
            metrics["heldout_loss"] = evals[-1]["heldout_loss"]
        metrics.update(launch.parameter_figures(history))
        ctx.log.info("sft: held-out loss %.3f -> %.3f; pass rate base %.3f -> sft %.3f (gain %.3f, 95%% CI %.3f..%.3f)",
                     metrics.get("heldout_loss_start", float("nan")), metrics.get("heldout_loss", float("nan")),
                     figures["base"].get("pass_rate", 0), figures["sft"].get("pass_rate", 0), gain["mean"],
                     gain["ci_low"], gain["ci_high"])
        return StageResult(
            counts={"heldout_prompts": len(rows), "steps": max((h["step"] for h in history), default=0)},
            metrics=metrics, details={"pass_rates": figures, "sft_minus_base": gain},
            outputs={**launch.model_outputs(ctx.output_dir), "train_log": TRAIN_LOG, "samples": SAMPLES,
                     "heldout_eval": EVAL_FILE})

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        return launch.register_policy(tracker, run_id, output_dir, pipeline_name, names.latest_of("sft"))
