"""What the ppo stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.core import names
from stages.alignment import launch
from stages.alignment.data import read_rows
from stages.alignment.evaluate import (EVAL_FILE, SAMPLES, checkable, family_gains, paired_difference, pass_rates, verdict,
                                       write_heldout)
from stages.alignment.generate import Generation, teacher_forced
from stages.alignment.lora import ADAPTER_DIR, check_targets
from stages.alignment.objectives import gae, leave_one_out, masked_mean, masked_whiten, shaped_rewards
from stages.alignment.rewards import mixed
from stages.alignment.trainer import MODEL_DIR, copy_tokenizer_files
from stages.core.contract import StageContext, StageResult
from stages.core.errors import StageError
from stages.core.ray_runtime import ensure_ray
from stages.ppo.config import PPOConfig
from stages.ppo.roles import CriticRole, PolicyRole, ReferenceRole, RewardRole

HISTORY = "ppo_log.jsonl"


@dataclass(frozen=True)
class Roles:
    """The four Ray actor handles of a PPO run."""

    policy: Any
    critic: Any
    reference: Any  # None for a LoRA policy: it is its own reference with the adapters off
    reward: Any

    def reference_logprobs(self, batch, temperature: float | None = None):
        if self.reference is None:
            return self.policy.reference_logprobs.remote(batch, temperature)
        return self.reference.logprobs.remote(batch, temperature)


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of training step ``step``: distinct per step and per pipeline seed."""
    return seed * 100_003 + step


def eval_sample_seed(seed: int, k: int) -> int:
    """The seed of the ``k``-th sampled answer per held-out prompt, apart from the greedy pass's ``seed``."""
    return seed + 7 + k


def rollout_batch(generations, pad_id: int) -> dict[str, np.ndarray]:
    """Prompt + answer per row, right-padded; ``action_mask[i, t]`` marks answer token t+1."""
    seqs = [g.prompt_ids + g.response_ids for g in generations]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(seqs), width), dtype=np.int64)
    action = np.zeros((len(seqs), width - 1), dtype=np.float32)
    for k, (g, s) in enumerate(zip(generations, seqs)):
        ids[k, :len(s)], attention[k, :len(s)] = s, 1
        action[k, len(g.prompt_ids) - 1:len(s) - 1] = 1.0
    return {"input_ids": ids, "attention_mask": attention, "action_mask": action}


def save_policy(sft_dir: str, state: dict, adapter: dict[str, bytes], out: Path) -> None:
    """The trained policy as a model folder (the plain weights, a LoRA adapter folded in) and, for a LoRA
    policy, its adapter files: bytes from the actor, which may run on another node."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype="float32")
    model.load_state_dict(state)
    model.save_pretrained(str(out / MODEL_DIR), safe_serialization=True)
    copy_tokenizer_files(Path(sft_dir), out / MODEL_DIR)
    for name, content in adapter.items():
        (out / ADAPTER_DIR).mkdir(exist_ok=True)
        (out / ADAPTER_DIR / name).write_bytes(content)


class AdaptiveKL:
    """Ziegler et al. (2019): nudge the coefficient so the per-answer KL tracks a target."""

    def __init__(self, cfg):
        self.coef, self.cfg = cfg.coef, cfg

    def update(self, kl: float, answers: int) -> None:
        if self.cfg.adaptive:
            error = float(np.clip(kl / self.cfg.target - 1, -0.2, 0.2))
            self.coef *= 1 + error * answers / self.cfg.horizon


class PPOTrainer:
    """What PPOStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[PPOConfig]) -> StageResult:
        import ray

        cfg = ctx.config
        sft_dir, rm_dir = str(ctx.inputs["model"].path), str(ctx.inputs["reward_model"].path)
        prompts = [r for r in checkable(read_rows(ctx.inputs["prompts"].path), None)
                   if cfg.families is None or r["family"] in cfg.families]
        if len(prompts) < cfg.rollout.batch_size:
            raise StageError(f"ppo: {len(prompts)} training prompts for families {cfg.families}, fewer than "
                             f"ppo.rollout.batch_size={cfg.rollout.batch_size}")
        heldout = checkable(read_rows(ctx.inputs["heldout"].path), cfg.eval.heldout_per_family)
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(sft_dir)
        pad_id = tokenizer.pad_token_id
        anchors = self._anchors(ctx, cfg, tokenizer)
        a, r = cfg.actors, cfg.rollout
        if cfg.lora is not None:
            check_targets(Path(sft_dir), cfg.lora, "ppo.lora.target_modules")
        # the actors may run on nodes that share no disk with this driver: they read the models where
        # for_workers put them (object storage then, else these very folders)
        sft_at, rm_at = ctx.for_workers(Path(sft_dir), "sft-model"), ctx.for_workers(Path(rm_dir), "reward-model")
        policy = ray.remote(PolicyRole).options(num_cpus=a.policy).remote(
            sft_at, num_cpus=a.policy, lr=cfg.policy_lr, grad_clip=cfg.grad_clip, temperature=r.temperature,
            seed=ctx.seed, rollout_engine=cfg.rollout_engine, lora_settings=cfg.lora.model_dump() if cfg.lora else None)
        critic = ray.remote(CriticRole).options(num_cpus=a.critic).remote(
            rm_at if cfg.critic_init == "reward" else sft_at, num_cpus=a.critic, lr=cfg.critic_lr,
            grad_clip=cfg.grad_clip, pad_id=pad_id, seed=ctx.seed)
        reference = None if cfg.lora else ray.remote(ReferenceRole).options(num_cpus=a.reference).remote(
            sft_at, num_cpus=a.reference, temperature=r.temperature)  # a LoRA policy is its own, adapters off
        reward = ray.remote(RewardRole).options(num_cpus=a.reward).remote(rm_at, num_cpus=a.reward)
        try:
            roles = Roles(policy=policy, critic=critic, reference=reference, reward=reward)
            before = self._evaluate(roles, heldout, cfg, pad_id=pad_id, seed=ctx.seed)
            history = self._train(ctx, cfg, roles, prompts=prompts, anchors=anchors, pad_id=pad_id)
            after = self._evaluate(roles, heldout, cfg, pad_id=pad_id, seed=ctx.seed)
            state = ray.get(policy.state_dict.remote())
            adapter = ray.get(policy.adapter_files.remote())
            counts = ray.get(policy.parameter_counts.remote())
        finally:
            for actor in (policy, critic, reference, reward):
                if actor is not None:
                    ray.kill(actor)
        save_policy(sft_dir, state, adapter, ctx.output_dir)
        result = self._result(ctx, cfg, heldout, before, after, history)
        result.metrics.update(counts)
        return result

    @staticmethod
    def _anchors(ctx, cfg: PPOConfig, tokenizer) -> list[Generation]:
        """SFT examples of the families PPO does not train on, as (prompt, answer) token ids."""
        if not cfg.anchor_coef or cfg.families is None:
            return []
        rows = [r for r in read_rows(ctx.inputs["prompts"].path) if r["family"] not in cfg.families]
        return teacher_forced(tokenizer, [r["prompt_text"] for r in rows], [r["response_text"] for r in rows])

    def _train(self, ctx, cfg: PPOConfig, roles: Roles, *, prompts, anchors, pad_id: int) -> list[dict]:
        import ray

        policy, critic, reward = roles.policy, roles.critic, roles.reward
        rng = np.random.default_rng(ctx.seed)
        kl_ctl = AdaptiveKL(cfg.kl)
        history: list[dict[str, Any]] = []
        r = cfg.rollout
        for step in range(1, cfg.steps + 1):
            t0 = time.time()
            asked = [prompts[i] for i in rng.choice(len(prompts), size=r.batch_size, replace=False)]
            rows = [row for row in asked for _ in range(r.samples_per_prompt)]  # a prompt's answers side by side
            gens = ray.get(policy.generate.remote([p["prompt_text"] for p in rows], max_new_tokens=r.max_new_tokens,
                                                  batch_size=len(rows), do_sample=True, top_p=r.top_p,
                                                  seed=rollout_seed(ctx.seed, step)))
            batch = rollout_batch(gens, pad_id)
            t1 = time.time()
            old_lp, ref_lp, scores, values = (np.array(x) for x in ray.get([  # copies: store objects are read-only
                policy.logprobs.remote(batch), roles.reference_logprobs(batch), reward.score.remote(batch),
                critic.values.remote(batch)]))
            t2 = time.time()
            stopped = np.array([g.stopped for g in gens])
            passed = [verdict(row, g.text) for row, g in zip(rows, gens)]
            scores = mixed(cfg.rewards, np.array(passed), stopped, scores)  # the reward model's score by default
            scores = scores - r.missing_eos_penalty * (~stopped)
            relative = torch.from_numpy(scores).float()
            if r.leave_one_out_baseline:
                relative = leave_one_out(relative, r.samples_per_prompt)
            mask = torch.from_numpy(batch["action_mask"])
            rewards, kl = shaped_rewards(relative, torch.from_numpy(old_lp),
                                         torch.from_numpy(ref_lp), mask, kl_ctl.coef)
            advantages, returns = gae(rewards, torch.from_numpy(values), mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask) * mask
            batch.update(old_logprobs=old_lp, old_values=values, advantages=advantages.numpy().astype(np.float32),
                         returns=returns.numpy().astype(np.float32))
            updates = []
            for _ in range(cfg.ppo_epochs):
                order = rng.permutation(len(rows))
                for start in range(0, len(rows), cfg.mini_batch_size):
                    idx = order[start:start + cfg.mini_batch_size]
                    mb = self._slice(batch, idx)
                    anchor = None
                    if anchors:
                        picked = rng.choice(len(anchors), size=min(cfg.anchor_batch_size, len(anchors)), replace=False)
                        anchor = rollout_batch([anchors[i] for i in picked], pad_id)
                    p, c = ray.get([policy.train_step.remote(mb, cfg.clip_ratio, anchor, cfg.anchor_coef),
                                    critic.train_step.remote(mb, cfg.value_clip)])
                    updates.append({**p, **c})
            t3 = time.time()
            kl_per_answer = float(kl.sum(1).mean())
            kl_ctl.update(kl_per_answer, len(rows))
            first = mask.argmax(1)
            metrics = {
                "reward": float(scores.mean()), "kl": kl_per_answer, "kl_coef": kl_ctl.coef,
                "response_length": float(mask.sum(1).mean()),
                "return": float(returns[torch.arange(len(gens)), first].mean()),
                "value": float(masked_mean(torch.from_numpy(values), mask)),
                "advantage_abs": float(masked_mean(advantages.abs(), mask)),
                "rollout_pass_rate": float(np.mean(passed)), "stopped_fraction": float(stopped.mean()),
                "time_generation_s": t1 - t0, "time_scoring_s": t2 - t1, "time_training_s": t3 - t2,
                **{k: float(np.mean([u[k] for u in updates])) for k in updates[0]},
            }
            history.append({"step": step, **metrics})
            if step % cfg.log_every == 0 or step == cfg.steps:
                ctx.log_metrics(metrics, step=step)
                ctx.log.info("ppo: step %d/%d reward %.3f kl %.3f pass %.2f len %.1f policy_loss %.3f critic_loss %.3f "
                             "clip %.2f (gen %.1f s, score %.1f s, train %.1f s)", step, cfg.steps, metrics["reward"],
                             metrics["kl"], metrics["rollout_pass_rate"], metrics["response_length"],
                             metrics["policy_loss"], metrics["critic_loss"], metrics["ppo_clip_ratio"],
                             t1 - t0, t2 - t1, t3 - t2)
        return history

    @staticmethod
    def _slice(batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``idx``, trimmed to their longest sequence (less padding per update)."""
        width = int(batch["attention_mask"][idx].sum(1).max())
        out = {}
        for key, value in batch.items():
            part = value[idx]
            out[key] = part[:, :width] if key in ("input_ids", "attention_mask") else part[:, :width - 1]
        return out

    @staticmethod
    def _evaluate(roles: Roles, rows, cfg: PPOConfig, *, pad_id: int, seed: int) -> dict[str, Any]:
        """Greedy answers: pass rate and mean reward; sampled answers (``eval.samples_per_prompt``
        at ``eval.temperature``): the same two figures per prompt, and KL(policy || SFT) per answer."""
        policy, reward = roles.policy, roles.reward
        import ray

        ev = cfg.eval
        texts = [row["prompt_text"] for row in rows]
        greedy = ray.get(policy.generate.remote(texts, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                                do_sample=False, seed=seed))
        batch = rollout_batch(greedy, pad_id)
        scores = ray.get(reward.score.remote(batch))
        verdicts = [verdict(row, g.text) for row, g in zip(rows, greedy)]
        kls, sampled_verdicts, sampled_scores = [], [], []
        for k in range(ev.samples_per_prompt):
            sampled = ray.get(policy.generate.remote(texts, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                                     do_sample=True, top_p=cfg.rollout.top_p,
                                                     seed=eval_sample_seed(seed, k), temperature=ev.temperature))
            sb = rollout_batch(sampled, pad_id)
            lp, ref, score = ray.get([policy.logprobs.remote(sb, ev.temperature),
                                      roles.reference_logprobs(sb, ev.temperature), reward.score.remote(sb)])
            kls.append(((lp - ref) * sb["action_mask"]).sum(1))
            sampled_verdicts.append([verdict(row, g.text) for row, g in zip(rows, sampled)])
            sampled_scores.append(score)
        sampled_pass = np.mean(sampled_verdicts, axis=0)  # per prompt: the share of its samples that pass
        figures = pass_rates(rows, verdicts, ev.bootstrap, seed)
        figures.update({f"sampled_{k}": v for k, v in pass_rates(rows, sampled_pass.tolist(), ev.bootstrap,
                                                                  seed).items()})
        figures.update(mean_reward=float(scores.mean()), sampled_mean_reward=float(np.mean(sampled_scores)),
                       kl_to_sft=float(np.mean(kls)), response_length=float(batch["action_mask"].sum(1).mean()))
        return {"answers": [g.text for g in greedy], "verdicts": verdicts, "scores": scores.tolist(),
                "sampled_pass": sampled_pass.tolist(), "sampled_scores": np.mean(sampled_scores, axis=0).tolist(),
                "figures": figures}

    def _result(self, ctx, cfg, rows, before, after, history) -> StageResult:
        out = ctx.output_dir
        ev = cfg.eval
        metrics: dict[str, float] = {}
        for tag, result in (("sft", before), ("ppo", after)):
            metrics.update({f"{tag}.{k}": v for k, v in result["figures"].items()})
        pass_gain = paired_difference([float(v) for v in after["verdicts"]], [float(v) for v in before["verdicts"]],
                                      ev.bootstrap, ctx.seed)
        reward_gain = paired_difference(after["scores"], before["scores"], ev.bootstrap, ctx.seed)
        metrics.update({f"ppo_minus_sft.pass_rate.{k}": v for k, v in pass_gain.items()})
        by_family = family_gains(rows, after["verdicts"], before["verdicts"], ev.bootstrap, ctx.seed)
        metrics.update({f"ppo_minus_sft.{k}": v for k, v in by_family.items()})
        metrics.update({f"ppo_minus_sft.reward.{k}": v for k, v in reward_gain.items()})
        sampled_gain = paired_difference(after["sampled_pass"], before["sampled_pass"], ev.bootstrap, ctx.seed)
        metrics.update({f"ppo_minus_sft.sampled_pass_rate.{k}": v for k, v in sampled_gain.items()})
        sampled_by_family = family_gains(rows, after["sampled_pass"], before["sampled_pass"], ev.bootstrap, ctx.seed)
        metrics.update({f"ppo_minus_sft.sampled_{k}": v for k, v in sampled_by_family.items()})
        sampled_reward_gain = paired_difference(after["sampled_scores"], before["sampled_scores"], ev.bootstrap,
                                                ctx.seed)
        metrics.update({f"ppo_minus_sft.sampled_reward.{k}": v for k, v in sampled_reward_gain.items()})
        timing = {k: float(np.mean([h[k] for h in history])) for k in ("time_generation_s", "time_scoring_s",
                                                                       "time_training_s")}
        metrics.update({f"mean_{k}": v for k, v in timing.items()})
        (out / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in history))
        answers = {"sft": before["answers"], "ppo": after["answers"]}
        verdicts = {"sft": before["verdicts"], "ppo": after["verdicts"]}
        write_heldout(out, rows, answers, verdicts, ev.samples_logged,
                      rewards={"sft": before["scores"], "ppo": after["scores"]})
        ctx.log.info("ppo: held-out pass rate %.3f -> %.3f greedy (gain %.3f, 95%% CI %.3f..%.3f), %.3f -> %.3f sampled "
                     "(gain %.3f, CI %.3f..%.3f); reward %.3f -> %.3f (gain CI %.3f..%.3f); KL to SFT %.3f",
                     before["figures"].get("pass_rate", 0), after["figures"].get("pass_rate", 0), pass_gain["mean"],
                     pass_gain["ci_low"], pass_gain["ci_high"], before["figures"].get("sampled_pass_rate", 0),
                     after["figures"].get("sampled_pass_rate", 0), sampled_gain["mean"], sampled_gain["ci_low"],
                     sampled_gain["ci_high"], before["figures"]["mean_reward"], after["figures"]["mean_reward"],
                     reward_gain["ci_low"], reward_gain["ci_high"], after["figures"]["kl_to_sft"])
        return StageResult(counts={"steps": cfg.steps, "heldout_prompts": len(rows),
                                   "rollout_answers": cfg.steps * cfg.rollout.batch_size * cfg.rollout.samples_per_prompt},
                           metrics=metrics, details={"before": before["figures"], "after": after["figures"],
                                                     "pass_gain": pass_gain, "reward_gain": reward_gain,
                                                     "pass_gain_by_family": by_family,
                                                     "sampled_pass_gain": sampled_gain,
                                                     "sampled_pass_gain_by_family": sampled_by_family,
                                                     "time_split_s": timing},
                           outputs={**launch.model_outputs(out), "history": HISTORY, "samples": SAMPLES,
                                    "heldout_eval": EVAL_FILE})

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        return launch.register_policy(tracker, run_id, output_dir, pipeline_name, names.latest_of("ppo"))
