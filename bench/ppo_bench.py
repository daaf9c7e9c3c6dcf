"""PPO step anatomy and memory: the ppo stage's four-actor layout (policy, critic,
reference, reward as Ray actors) for a few steps, with its time split (generation /
scoring / training) and the summed peak RSS of the four actor processes; then the same
four models and the same step run serially in one plain process (its peak RSS and
split), in the same run.

Usage: .venv/bin/python bench/ppo_bench.py --sft SFT_MODEL --reward REWARD_MODEL \
         --prompts SFT_TRAIN.jsonl --heldout SFT_HELDOUT.jsonl [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLES = ("PolicyRole", "CriticRole", "ReferenceRole", "RewardRole")


class ActorRSS(threading.Thread):
    """Polls the Ray actor processes of the four roles; keeps the peak of their summed RSS."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.per_role, self.done = 0, {}, False

    def run(self) -> None:
        while not self.done:
            now = {}
            for proc in psutil.process_iter(["name", "cmdline"]):
                try:
                    title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
                    role = next((r for r in ROLES if f"ray::{r}" in title), None)
                    if role:
                        now[role] = now.get(role, 0) + proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            if len(now) == len(ROLES) and sum(now.values()) > self.peak:
                self.peak, self.per_role = sum(now.values()), now
            time.sleep(0.5)


ONE_PROCESS = r'''
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from stages.alignment.data import read_rows
from stages.alignment.evaluate import checkable
from stages.ppo.config import PPOConfig
from stages.ppo.roles import CriticRole, PolicyRole, ReferenceRole, RewardRole
from stages.ppo.trainer import PPOTrainer, rollout_batch
from stages.alignment.objectives import gae, masked_whiten, shaped_rewards
sft, rm, prompts_path, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
cfg = PPOConfig()
torch.set_num_threads(2)
policy = PolicyRole(sft, num_cpus=2, lr=cfg.policy_lr, grad_clip=cfg.grad_clip, temperature=1.0, seed=0)
critic = CriticRole(rm, num_cpus=2, lr=cfg.critic_lr, grad_clip=cfg.grad_clip, pad_id=policy.tokenizer.pad_token_id,
                    seed=0)
ref, reward = ReferenceRole(sft, num_cpus=2, temperature=1.0), RewardRole(rm, num_cpus=2)
rows = checkable(read_rows(prompts_path), None)
rng = np.random.default_rng(0)
split = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
for step in range(steps):
    t0 = time.time()
    batch_rows = [rows[i] for i in rng.choice(len(rows), cfg.rollout.batch_size, replace=False)]
    gens = policy.generate([r["prompt_text"] for r in batch_rows], max_new_tokens=cfg.rollout.max_new_tokens,
                           batch_size=cfg.rollout.batch_size, do_sample=True, seed=step)
    b = rollout_batch(gens, policy.tokenizer.pad_token_id)
    t1 = time.time()
    old, rl, sc, v = policy.logprobs(b), ref.logprobs(b), reward.score(b), critic.values(b)
    t2 = time.time()
    mask = torch.from_numpy(b["action_mask"])
    rw, _ = shaped_rewards(torch.from_numpy(sc).float(), torch.from_numpy(old), torch.from_numpy(rl), mask, cfg.kl.coef)
    adv, ret = gae(rw, torch.from_numpy(v), mask, cfg.gamma, cfg.lam)
    b.update(old_logprobs=old, old_values=v, advantages=(masked_whiten(adv, mask) * mask).numpy().astype(np.float32),
             returns=ret.numpy().astype(np.float32))
    for _ in range(cfg.ppo_epochs):
        order = rng.permutation(cfg.rollout.batch_size)
        for s in range(0, cfg.rollout.batch_size, cfg.mini_batch_size):
            mb = PPOTrainer._slice(b, order[s:s + cfg.mini_batch_size])
            policy.train_step(mb, cfg.clip_ratio); critic.train_step(mb, cfg.value_clip)
    t3 = time.time()
    if step:  # the first step warms up
        split["generation"] += t1 - t0; split["scoring"] += t2 - t1; split["training"] += t3 - t2
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "split_s": {k: v / max(1, steps - 1) for k, v in split.items()}}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--reward", required=True)
    parser.add_argument("--prompts", required=True, help="align_data's sft_train.jsonl")
    parser.add_argument("--heldout", required=True, help="align_data's sft_heldout.jsonl")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]

    watcher = ActorRSS()
    watcher.start()
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "stages", "ppo", "--input", f"model={args.sft}", "--input",
               f"reward_model={args.reward}", "--input", f"prompts={args.prompts}", "--input",
               f"heldout={args.heldout}", "--output", f"{out}/ppo", "--set", f"ppo.steps={args.steps}",
               "--set", "ppo.eval.heldout_per_family=4"]
        subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        history = [json.loads(line) for line in (Path(out) / "ppo" / "ppo_log.jsonl").read_text().splitlines()]
    watcher.done = True
    watcher.join()
    later = history[1:] or history
    actors = {k: sum(h[f"time_{k}_s"] for h in later) / len(later) for k in ("generation", "scoring", "training")}
    single = json.loads(subprocess.run([sys.executable, "-c", ONE_PROCESS, str(root), args.sft, args.reward,
                                        args.prompts, str(args.steps)], check=True, capture_output=True,
                                       text=True).stdout.strip().splitlines()[-1])
    total_actor = sum(actors.values())
    total_single = sum(single["split_s"].values())
    print(f"four actors : step {total_actor:.2f} s = " + ", ".join(f"{k} {v:.2f} s" for k, v in actors.items())
          + f"; peak RSS of the four actor processes {watcher.peak / 2**20:,.0f} MB "
          + str({k: round(v / 2**20) for k, v in watcher.per_role.items()}))
    print(f"one process : step {total_single:.2f} s = " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                     single["split_s"].items())
          + f"; peak RSS {single['peak_rss_mb']:,.0f} MB")
    print(json.dumps({"actors": {"split_s": actors, "peak_rss_mb": watcher.peak / 2**20},
                      "one_process": single, "step_ratio_actors_vs_one_process": total_actor / total_single,
                      "rss_ratio_actors_vs_one_process": watcher.peak / 2**20 / single["peak_rss_mb"]}))


if __name__ == "__main__":
    main()
