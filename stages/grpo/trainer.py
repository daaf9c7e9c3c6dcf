"""What the grpo stage does when it runs: groups of sampled answers per prompt, rewards from the
mix (checkers, reward model, format), advantages within each group, and the clipped policy
update with a KL term to the reference. No critic: the group is the baseline.

The policy actor is PPO's (it generates with vLLM or transformers and trains); the reference is
a frozen copy in its own actor, or, for a LoRA policy, the policy itself with its adapters off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.alignment import launch, lora
from stages.alignment.data import read_rows
from stages.alignment.evaluate import (EVAL_FILE, SAMPLES, checkable, family_gains, paired_difference, pass_rates, verdict,
                                       write_heldout)
from stages.alignment.objectives import group_advantages, k3_kl, masked_mean
from stages.alignment.rewards import mixed
from stages.core import names
from stages.core.contract import StageContext, StageResult
from stages.core.errors import ConfigError, StageError
from stages.core.ray_runtime import ensure_ray
from stages.grpo.config import GRPOConfig
from stages.ppo.roles import PolicyRole, ReferenceRole, RewardRole
from stages.ppo.trainer import PPOTrainer, Roles, eval_sample_seed, rollout_batch, rollout_seed, save_policy

HISTORY = "grpo_log.jsonl"


class Scorer:
    """The reward mix of a run, and its Ray actors (PPO's ``Roles`` without a critic: the reference log-probs come
    from the reference actor, or from a LoRA policy with its adapters off)."""

    def __init__(self, cfg: GRPOConfig, roles: Roles):
        self.cfg, self.roles, self.policy, self.reward = cfg, roles, roles.policy, roles.reward

    def reference_logprobs(self, batch, temperature: float | None = None):
        return self.roles.reference_logprobs(batch, temperature)

    def rewards(self, rows, gens, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(reward, passed, stopped, the reward model's score or None when the mix does not weigh it) of each
        answer."""
        import ray

        passed = np.array([verdict(row, g.text) for row, g in zip(rows, gens)])
        stopped = np.array([g.stopped for g in gens])
        scores = np.array(ray.get(self.reward.score.remote(batch))) if self.reward is not None else None
        return mixed(self.cfg.rewards, passed, stopped, scores), passed, stopped, scores


class GRPOTrainer:
    def run(self, ctx: StageContext[GRPOConfig]) -> StageResult:
        import ray
        from transformers import AutoTokenizer

        cfg = ctx.config
        sft_dir = str(ctx.inputs["model"].path)
        rm = ctx.inputs.get("reward_model")
        if cfg.rewards.model and rm is None:
            raise ConfigError("grpo.rewards.model weighs the reward model, but no reward stage ran in this pipeline "
                              "(standalone: --input reward_model=PATH)")
        prompts = [r for r in checkable(read_rows(ctx.inputs["prompts"].path), None)
                   if cfg.families is None or r["family"] in cfg.families]
        if len(prompts) < cfg.prompts_per_step:
            raise StageError(f"grpo: {len(prompts)} training prompts for families {cfg.families}, fewer than "
                             f"grpo.prompts_per_step={cfg.prompts_per_step}")
        heldout = checkable(read_rows(ctx.inputs["heldout"].path), cfg.eval.heldout_per_family)
        if cfg.lora is not None:
            lora.check_targets(Path(sft_dir), cfg.lora, "grpo.lora.target_modules")
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        pad_id = AutoTokenizer.from_pretrained(sft_dir).pad_token_id
        a = cfg.actors
        sft_at = ctx.for_workers(Path(sft_dir), "sft-model")  # as in ppo: the actors may share no disk with us
        policy = ray.remote(PolicyRole).options(num_cpus=a.policy).remote(
            sft_at, num_cpus=a.policy, lr=cfg.lr, grad_clip=cfg.grad_clip, temperature=cfg.temperature,
            seed=ctx.seed, rollout_engine=cfg.rollout_engine,
            lora_settings=cfg.lora.model_dump() if cfg.lora else None)
        reference = None if cfg.lora else ray.remote(ReferenceRole).options(num_cpus=a.reference).remote(
            sft_at, num_cpus=a.reference, temperature=cfg.temperature)
        reward = ray.remote(RewardRole).options(num_cpus=a.reward).remote(
            ctx.for_workers(Path(rm.path), "reward-model"), num_cpus=a.reward) \
            if cfg.rewards.model else None
        scorer = Scorer(cfg, Roles(policy=policy, critic=None, reference=reference, reward=reward))
        try:
            before = self._evaluate(scorer, heldout, cfg, pad_id, ctx.seed)
            history = self._train(ctx, cfg, scorer, prompts, pad_id)
            after = self._evaluate(scorer, heldout, cfg, pad_id, ctx.seed)
            state = ray.get(policy.state_dict.remote())
            adapter = ray.get(policy.adapter_files.remote())
            counts = ray.get(policy.parameter_counts.remote())
        finally:
            for actor in (policy, reference, reward):
                if actor is not None:
                    ray.kill(actor)
        save_policy(sft_dir, state, adapter, ctx.output_dir)
        result = self._result(ctx, cfg, heldout, before, after, history)
        result.metrics.update(counts)
        return result

    def _train(self, ctx, cfg: GRPOConfig, scorer: Scorer, prompts, pad_id: int) -> list[dict[str, Any]]:
        import ray

        policy = scorer.policy
        rng = np.random.default_rng(ctx.seed)
        history: list[dict[str, Any]] = []
        group = cfg.group_size
        for step in range(1, cfg.steps + 1):
            t0 = time.time()
            asked = [prompts[i] for i in rng.choice(len(prompts), size=cfg.prompts_per_step, replace=False)]
            rows = [row for row in asked for _ in range(group)]  # a prompt's answers side by side
            gens = ray.get(policy.generate.remote([p["prompt_text"] for p in rows], max_new_tokens=cfg.max_new_tokens,
                                                  batch_size=len(rows), do_sample=True, top_p=cfg.top_p,
                                                  seed=rollout_seed(ctx.seed, step)))
            batch = rollout_batch(gens, pad_id)
            t1 = time.time()
            old_lp, ref_lp = (np.array(x) for x in ray.get([policy.logprobs.remote(batch),
                                                           scorer.reference_logprobs(batch)]))
            rewards, passed, stopped, model_scores = scorer.rewards(rows, gens, batch)
            t2 = time.time()
            mask = torch.from_numpy(batch["action_mask"])
            advantage = group_advantages(torch.from_numpy(rewards).float(), group, cfg.scale_rewards)
            batch.update(old_logprobs=old_lp, ref_logprobs=ref_lp,
                         advantages=(advantage[:, None] * mask).numpy().astype(np.float32))
            updates = []
            for _ in range(cfg.epochs):
                order = rng.permutation(len(rows))
                for start in range(0, len(rows), cfg.mini_batch_size):
                    mb = PPOTrainer._slice(batch, order[start:start + cfg.mini_batch_size])
                    updates.append(ray.get(policy.train_step.remote(mb, cfg.clip_ratio, kl_coef=cfg.kl_coef)))
            t3 = time.time()
            kl = masked_mean(k3_kl(torch.from_numpy(old_lp), torch.from_numpy(ref_lp)), mask)
            grouped = rewards.reshape(-1, group)
            metrics = {
                "reward": float(rewards.mean()), "reward_std": float(grouped.std(1).mean()),
                "solved_groups": float((grouped.std(1) == 0).mean()), "kl": float(kl),
                "response_length": float(mask.sum(1).float().mean()), "rollout_pass_rate": float(passed.mean()),
                "stopped_fraction": float(stopped.mean()),
                "policy_loss": float(np.mean([u["policy_loss"] for u in updates])),
                "clip_ratio": float(np.mean([u["ppo_clip_ratio"] for u in updates])),
                "entropy": float(np.mean([u["entropy"] for u in updates])),
                "policy_grad_norm": float(np.mean([u["policy_grad_norm"] for u in updates])),
                "time_generation_s": t1 - t0, "time_scoring_s": t2 - t1, "time_training_s": t3 - t2,
            }
            if model_scores is not None:
                metrics["model_score"] = float(model_scores.mean())
            history.append({"step": step, **metrics})
            if step % cfg.log_every == 0 or step == cfg.steps:
                ctx.log_metrics(metrics, step=step)
                ctx.log.info("grpo: step %d/%d reward %.3f (group std %.3f) pass %.2f kl %.4f len %.1f policy_loss %.3f "
                             "(gen %.1f s, score %.1f s, train %.1f s)", step, cfg.steps, metrics["reward"],
                             metrics["reward_std"], metrics["rollout_pass_rate"], metrics["kl"],
                             metrics["response_length"], metrics["policy_loss"], t1 - t0, t2 - t1, t3 - t2)
        return history

    @staticmethod
    def _evaluate(scorer: Scorer, rows, cfg: GRPOConfig, pad_id: int, seed: int) -> dict[str, Any]:
        """Greedy answers: pass rate and mean reward; ``eval.samples_per_prompt`` sampled answers: the same per prompt,
        and KL(policy || reference) per answer (summed over its tokens, as PPO reports it)."""
        import ray

        ev, policy = cfg.eval, scorer.policy
        texts = [row["prompt_text"] for row in rows]
        greedy = ray.get(policy.generate.remote(texts, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                                do_sample=False, seed=seed))
        rewards, verdicts, _, _ = scorer.rewards(rows, greedy, rollout_batch(greedy, pad_id))
        kls, sampled_pass, sampled_rewards = [], [], []
        for k in range(ev.samples_per_prompt):
            sampled = ray.get(policy.generate.remote(texts, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                                     do_sample=True, top_p=cfg.top_p, seed=eval_sample_seed(seed, k),
                                                     temperature=ev.temperature))
            sb = rollout_batch(sampled, pad_id)
            lp, ref = ray.get([policy.logprobs.remote(sb, ev.temperature), scorer.reference_logprobs(sb, ev.temperature)])
            kls.append(((np.array(lp) - np.array(ref)) * sb["action_mask"]).sum(1))
            r, p, _, _ = scorer.rewards(rows, sampled, sb)
            sampled_rewards.append(r)
            sampled_pass.append(p)
        per_prompt_pass = np.mean(sampled_pass, axis=0)
        figures = pass_rates(rows, verdicts.tolist(), ev.bootstrap, seed)
        figures.update({f"sampled_{k}": v for k, v in pass_rates(rows, per_prompt_pass.tolist(), ev.bootstrap,
                                                                  seed).items()})
        figures.update(mean_reward=float(rewards.mean()), sampled_mean_reward=float(np.mean(sampled_rewards)),
                       kl_to_sft=float(np.mean(kls)))
        return {"answers": [g.text for g in greedy], "verdicts": verdicts.tolist(), "scores": rewards.tolist(),
                "sampled_pass": per_prompt_pass.tolist(), "figures": figures}

    @staticmethod
    def _result(ctx, cfg: GRPOConfig, rows, before, after, history) -> StageResult:
        out, ev = ctx.output_dir, cfg.eval
        metrics: dict[str, float] = {}
        for tag, result in (("sft", before), ("grpo", after)):
            metrics.update({f"{tag}.{k}": v for k, v in result["figures"].items()})
        gain = paired_difference([float(v) for v in after["verdicts"]], [float(v) for v in before["verdicts"]],
                                 ev.bootstrap, ctx.seed)
        metrics.update({f"grpo_minus_sft.pass_rate.{k}": v for k, v in gain.items()})
        by_family = family_gains(rows, after["verdicts"], before["verdicts"], ev.bootstrap, ctx.seed)
        metrics.update({f"grpo_minus_sft.{k}": v for k, v in by_family.items()})
        sampled_gain = paired_difference(after["sampled_pass"], before["sampled_pass"], ev.bootstrap, ctx.seed)
        metrics.update({f"grpo_minus_sft.sampled_pass_rate.{k}": v for k, v in sampled_gain.items()})
        metrics.update({f"mean_{k}": float(np.mean([h[k] for h in history]))
                        for k in ("time_generation_s", "time_scoring_s", "time_training_s")})
        (out / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in history))
        write_heldout(out, rows, {"sft": before["answers"], "grpo": after["answers"]},
                      {"sft": before["verdicts"], "grpo": after["verdicts"]}, ev.samples_logged,
                      rewards={"sft": before["scores"], "grpo": after["scores"]})
        ctx.log.info("grpo: held-out pass rate %.3f -> %.3f greedy (gain %.3f, 95%% CI %.3f..%.3f), sampled %.3f -> "
                     "%.3f (gain %.3f, CI %.3f..%.3f); KL to SFT %.3f", before["figures"].get("pass_rate", 0),
                     after["figures"].get("pass_rate", 0), gain["mean"], gain["ci_low"], gain["ci_high"],
                     before["figures"].get("sampled_pass_rate", 0), after["figures"].get("sampled_pass_rate", 0),
                     sampled_gain["mean"], sampled_gain["ci_low"], sampled_gain["ci_high"],
                     after["figures"]["kl_to_sft"])
        outputs = {**launch.model_outputs(out), "history": HISTORY, "samples": SAMPLES, "heldout_eval": EVAL_FILE}
        return StageResult(counts={"steps": cfg.steps, "heldout_prompts": len(rows),
                                   "rollout_answers": cfg.steps * cfg.prompts_per_step * cfg.group_size},
                           metrics=metrics, details={"before": before["figures"], "after": after["figures"],
                                                     "pass_gain": gain, "pass_gain_by_family": by_family,
                                                     "sampled_pass_gain": sampled_gain},
                           outputs=outputs)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        return launch.register_policy(tracker, run_id, output_dir, pipeline_name, names.latest_of("grpo"))
