"""What the reward stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from stages.core import names
from stages.alignment import launch
from stages.alignment.data import read_rows
from stages.alignment.evaluate import bootstrap_ci, checkable, verdict
from stages.alignment.generate import generate, load_policy
from stages.alignment.scoring import load_reward_model, score_ids, score_texts
from stages.alignment.trainer import MODEL_DIR, TRAIN_LOG
from stages.core.contract import StageContext, StageResult
from stages.core.tracking import register_artifact
from stages.reward.config import RewardConfig

SAMPLED = "sampled_scores.jsonl"
TRAIN_PAIRS = "train_pairs.jsonl"


def registry_name(pipeline: str) -> str:
    return names.registered_model(pipeline, "reward")


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    if len(set(np.asarray(x).tolist())) < 2 or len(set(np.asarray(y).tolist())) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def accuracy_goal(goal, by_family: dict[str, list[float]]) -> dict[str, float]:
    """Held-out pair accuracy over the families the goal names (those the model can judge), and whether it
    reaches the goal: a figure, not a gate (the other families are reported, not held to it)."""
    judged = [v for f in goal.families if f in by_family for v in by_family[f]]
    if not judged:
        return {}
    accuracy = float(np.mean(judged))
    families = [f for f in goal.families if f in by_family]
    reached = sum(float(np.mean(by_family[f])) >= goal.min_accuracy for f in families)
    return {"goal.pairwise_accuracy": accuracy, "goal.met": float(accuracy >= goal.min_accuracy),
            "goal.families_met": float(reached), "goal.families": float(len(families))}


class RewardTrainer:
    """What RewardStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[RewardConfig]) -> StageResult:
        cfg = ctx.config
        sft_dir = ctx.inputs["model"].path
        threads = max(1, int(cfg.distributed.cpus_per_worker))
        train_pairs = read_rows(ctx.inputs["train"].path)
        on_policy = self._on_policy_pairs(ctx, cfg, sft_dir, threads)
        with open(ctx.output_dir / TRAIN_PAIRS, "w", encoding="utf-8") as handle:
            for row in train_pairs + on_policy:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        history = launch.train(ctx, sft_dir, ctx.output_dir / TRAIN_PAIRS, ctx.inputs["heldout"].path)
        rm, tokenizer = load_reward_model(ctx.output_dir / MODEL_DIR, threads)
        metrics: dict[str, float] = {}

        pairs = read_rows(ctx.inputs["heldout"].path)
        prompts = [p["prompt_text"] for p in pairs]
        chosen = score_texts(rm, tokenizer, prompts, [p["response_text"] for p in pairs])
        rejected = score_texts(rm, tokenizer, prompts, [p["rejected_text"] for p in pairs])
        right = chosen > rejected
        metrics["pairwise_accuracy"] = float(right.mean())
        by_family = defaultdict(list)
        for p, ok in zip(pairs, right):
            by_family[p["family"]].append(float(ok))
        metrics.update({f"pairwise_accuracy.{f}": float(np.mean(v)) for f, v in sorted(by_family.items())})
        for family, values in sorted(by_family.items()):  # every family reported with its interval
            low, high = bootstrap_ci(np.array(values), cfg.eval.generation.bootstrap, ctx.seed)
            metrics[f"pairwise_accuracy.{family}.ci_low"], metrics[f"pairwise_accuracy.{family}.ci_high"] = low, high
        metrics.update(accuracy_goal(cfg.accuracy_goal, by_family))

        # does the reward follow the checker on answers the SFT model actually gives?
        ev = cfg.eval
        rows = checkable(read_rows(ctx.inputs["prompts"].path), ev.generation.heldout_per_family)
        rows = [r for r in rows for _ in range(ev.samples_per_prompt)]
        policy, policy_tok = load_policy(sft_dir, threads)
        outs = generate(policy, policy_tok, [r["prompt_text"] for r in rows], ev.generation.max_new_tokens,
                        ev.generation.batch_size, do_sample=True, temperature=ev.temperature, top_p=ev.top_p,
                        seed=ctx.seed)
        rewards = score_ids(rm, [o.prompt_ids + o.response_ids for o in outs], tokenizer.pad_token_id)
        passed = np.array([verdict(r, o.text) for r, o in zip(rows, outs)], dtype=np.float64)
        metrics["sampled_pass_rate"] = float(passed.mean())
        metrics["spearman_reward_vs_checker"] = spearman(rewards, passed)
        if passed.any() and not passed.all():
            metrics["mean_reward_pass"] = float(rewards[passed == 1].mean())
            metrics["mean_reward_fail"] = float(rewards[passed == 0].mean())
        for family in sorted({r["family"] for r in rows}):
            idx = [k for k, r in enumerate(rows) if r["family"] == family]
            rho = spearman(rewards[idx], passed[idx])
            if rho == rho:
                metrics[f"spearman.{family}"] = rho
        with open(ctx.output_dir / SAMPLED, "w", encoding="utf-8") as handle:
            for r, o, s, ok in zip(rows, outs, rewards, passed):
                handle.write(json.dumps({"family": r["family"], "prompt": r["prompt"], "reference": r["answer"],
                                         "answer": o.text, "reward": float(s), "pass": bool(ok)},
                                        ensure_ascii=False) + "\n")
        evals = [h for h in history if "heldout_accuracy" in h]
        if evals:
            metrics["heldout_loss"] = evals[-1]["heldout_loss"]
        metrics.update(launch.parameter_figures(history))
        ctx.log.info("reward: held-out pairwise accuracy %.3f %s; Spearman(reward, checker) %.3f on %d sampled "
                     "answers (pass rate %.3f)", metrics["pairwise_accuracy"],
                     {f: round(np.mean(v), 3) for f, v in sorted(by_family.items())},
                     metrics["spearman_reward_vs_checker"], len(rows), metrics["sampled_pass_rate"])
        return StageResult(counts={"heldout_pairs": len(pairs), "sampled_answers": len(rows),
                                   "train_pairs": len(train_pairs), "on_policy_pairs": len(on_policy),
                                   "steps": max((h["step"] for h in history), default=0)},
                           metrics=metrics,
                           details={"pairwise_accuracy_by_family": {f: float(np.mean(v)) for f, v in by_family.items()}},
                           outputs={**launch.model_outputs(ctx.output_dir), "train_log": TRAIN_LOG, "sampled_scores": SAMPLED,
                                    "train_pairs": TRAIN_PAIRS})

    @staticmethod
    def _on_policy_pairs(ctx, cfg: RewardConfig, sft_dir, threads: int) -> list[dict]:
        """Pairs among the SFT model's own answers to a seeded sample of training prompts:
        chosen = an answer the checker accepts (its own if one was sampled, else the
        reference), rejected = each distinct answer it refuses. PPO ranks exactly these."""
        op = cfg.on_policy
        rows = checkable(read_rows(ctx.inputs["train_prompts"].path), None)
        if not op.prompts or not rows:
            return []
        rng = np.random.default_rng(ctx.seed)
        rows = [rows[i] for i in rng.choice(len(rows), size=min(op.prompts, len(rows)), replace=False)]
        policy, tokenizer = load_policy(sft_dir, threads)
        asked = [r for r in rows for _ in range(op.samples_per_prompt)]
        outs = generate(policy, tokenizer, [r["prompt_text"] for r in asked], op.max_new_tokens, op.batch_size,
                        do_sample=True, temperature=op.temperature, seed=ctx.seed + 1)
        pairs, refused = [], 0
        for k, row in enumerate(rows):
            answers = outs[k * op.samples_per_prompt:(k + 1) * op.samples_per_prompt]
            good = [o for o in answers if o.stopped and verdict(row, o.text)]
            bad = {o.text.strip(): o for o in answers if not verdict(row, o.text) and o.text.strip()}
            refused += sum(not verdict(row, o.text) for o in answers)
            chosen = tokenizer.decode(good[0].response_ids, skip_special_tokens=False) if good else row["response_text"]
            for j, (text, o) in enumerate(sorted(bad.items())[:op.max_pairs_per_prompt]):
                rejected = tokenizer.decode(o.response_ids, skip_special_tokens=False)
                if not o.stopped:
                    rejected = text  # cut at the length limit: no end-of-turn token
                pairs.append({**row, "id": f"onpolicy-{row['id']}-{j}", "response_text": chosen, "rejected": text,
                              "rejected_text": rejected})
        ctx.log.info("reward: %d on-policy pairs from %d SFT answers to %d prompts (%d refused by the checkers)",
                     len(pairs), len(outs), len(rows), refused)
        return pairs

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        name = registry_name(pipeline_name)
        version = register_artifact(tracker, name, run_id, MODEL_DIR, names.latest_of("reward"))
        return {names.TAG_REGISTERED_MODEL: f"{name}/{version}"}
