"""What the dpo stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core import names
from stages.alignment import launch
from stages.alignment.data import read_rows
from stages.alignment.evaluate import (EVAL_FILE, SAMPLES, checkable, family_gains, paired_difference, pass_rates, verdict,
                                       write_heldout)
from stages.alignment.generate import generate, load_policy
from stages.alignment.trainer import MODEL_DIR, TRAIN_LOG
from stages.core.contract import StageContext, StageResult
from stages.dpo.config import DPOConfig
from stages.ppo.roles import answer_logprobs
from stages.ppo.trainer import rollout_batch


@torch.no_grad()
def answer_logprob(model, batch: dict[str, np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """Summed log-prob of each row's answer (the same computation as PPO's actors)."""
    inputs = {"input_ids": torch.from_numpy(batch["input_ids"]),
              "attention_mask": torch.from_numpy(batch["attention_mask"])}
    return answer_logprobs(model, inputs, torch.from_numpy(batch["action_mask"]), temperature).sum(1).numpy()


def evaluate_policy(model_dir: Path, reference, rows: list[dict], ev, seed: int, threads: int,
                    reward=None) -> dict[str, Any]:
    """As ppo evaluates: greedy pass rate (and mean reward when a reward model is given);
    on answers sampled at ``ev.temperature`` the sampled pass rate (and reward) and the KL to
    the reference, mean of log pi(y) - log ref(y)."""
    from stages.alignment.scoring import score_ids

    model, tokenizer = load_policy(model_dir, threads)
    texts = [r["prompt_text"] for r in rows]
    greedy = generate(model, tokenizer, texts, ev.max_new_tokens, ev.batch_size)
    verdicts = [verdict(r, g.text) for r, g in zip(rows, greedy)]
    figures = pass_rates(rows, verdicts, ev.bootstrap, seed)
    scores = [0.0] * len(rows)
    if reward is not None:
        scores = score_ids(reward, [g.prompt_ids + g.response_ids for g in greedy], tokenizer.pad_token_id).tolist()
        figures["mean_reward"] = float(np.mean(scores))
    kls, sampled_verdicts, sampled_scores = [], [], []
    for k in range(ev.samples_per_prompt):
        sampled = generate(model, tokenizer, texts, ev.max_new_tokens, ev.batch_size, do_sample=True,
                           temperature=ev.temperature, seed=seed + 7 + k)
        batch = rollout_batch(sampled, tokenizer.pad_token_id)
        kls.append(answer_logprob(model, batch, ev.temperature) - answer_logprob(reference, batch, ev.temperature))
        sampled_verdicts.append([verdict(r, g.text) for r, g in zip(rows, sampled)])
        if reward is not None:
            sampled_scores.append(score_ids(reward, [g.prompt_ids + g.response_ids for g in sampled],
                                            tokenizer.pad_token_id))
    sampled_pass = np.mean(sampled_verdicts, axis=0)
    figures.update({f"sampled_{k}": v for k, v in pass_rates(rows, sampled_pass.tolist(), ev.bootstrap, seed).items()})
    if sampled_scores:
        figures["sampled_mean_reward"] = float(np.mean(sampled_scores))
    figures["kl_to_sft"] = float(np.mean(kls))
    figures["response_length"] = float(np.mean([len(g.response_ids) for g in greedy]))
    return {"answers": [g.text for g in greedy], "verdicts": verdicts, "scores": scores,
            "sampled_pass": sampled_pass.tolist(), "figures": figures}


class DPOTrainer:
    """What DPOStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[DPOConfig]) -> StageResult:
        cfg = ctx.config
        sft_dir = ctx.inputs["model"].path
        history = launch.train(ctx, sft_dir, ctx.inputs["train"].path, ctx.inputs["heldout"].path)
        threads = max(1, int(cfg.distributed.cpus_per_worker))
        rows = checkable(read_rows(ctx.inputs["prompts"].path), cfg.eval.heldout_per_family)
        reference, _ = load_policy(sft_dir, threads)
        reward = None
        if "reward_model" in ctx.inputs:
            from stages.alignment.scoring import load_reward_model

            reward, _ = load_reward_model(ctx.inputs["reward_model"].path)
        before = evaluate_policy(sft_dir, reference, rows, cfg.eval, ctx.seed, threads, reward)
        after = evaluate_policy(ctx.output_dir / MODEL_DIR, reference, rows, cfg.eval, ctx.seed, threads, reward)
        metrics: dict[str, float] = {}
        for tag, result in (("sft", before), ("dpo", after)):
            metrics.update({f"{tag}.{k}": v for k, v in result["figures"].items()})
        gain = paired_difference([float(v) for v in after["verdicts"]], [float(v) for v in before["verdicts"]],
                                 cfg.eval.bootstrap, ctx.seed)
        metrics.update({f"dpo_minus_sft.pass_rate.{k}": v for k, v in gain.items()})
        metrics.update({f"dpo_minus_sft.{k}": v for k, v in family_gains(
            rows, after["verdicts"], before["verdicts"], cfg.eval.bootstrap, ctx.seed).items()})
        sampled_gain = paired_difference(after["sampled_pass"], before["sampled_pass"], cfg.eval.bootstrap, ctx.seed)
        metrics.update({f"dpo_minus_sft.sampled_pass_rate.{k}": v for k, v in sampled_gain.items()})
        metrics.update({f"dpo_minus_sft.sampled_{k}": v for k, v in family_gains(
            rows, after["sampled_pass"], before["sampled_pass"], cfg.eval.bootstrap, ctx.seed).items()})
        evals = [h for h in history if "heldout_accuracy" in h]
        if evals:
            metrics["heldout_pair_accuracy"] = evals[-1]["heldout_accuracy"]
            metrics["heldout_loss"] = evals[-1]["heldout_loss"]
        metrics.update(launch.parameter_figures(history))
        write_heldout(ctx.output_dir, rows, {"sft": before["answers"], "dpo": after["answers"]},
                      {"sft": before["verdicts"], "dpo": after["verdicts"]}, cfg.eval.samples_logged)
        ctx.log.info("dpo: held-out pair accuracy %.3f; pass rate %.3f -> %.3f (gain %.3f, 95%% CI %.3f..%.3f); "
                     "KL to SFT %.3f", metrics.get("heldout_pair_accuracy", float("nan")),
                     before["figures"].get("pass_rate", 0), after["figures"].get("pass_rate", 0), gain["mean"],
                     gain["ci_low"], gain["ci_high"], after["figures"]["kl_to_sft"])
        return StageResult(counts={"heldout_prompts": len(rows), "steps": max((h["step"] for h in history), default=0)},
                           metrics=metrics, details={"before": before["figures"], "after": after["figures"],
                                                     "pass_gain": gain, "sampled_pass_gain": sampled_gain},
                           outputs={**launch.model_outputs(ctx.output_dir), "train_log": TRAIN_LOG, "samples": SAMPLES,
                                    "heldout_eval": EVAL_FILE})

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        return launch.register_policy(tracker, run_id, output_dir, pipeline_name, names.latest_of("dpo"))
