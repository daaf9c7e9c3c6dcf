"""Is the reward model a better judge than the policy it trains? For each label family
(language, question_type) score every label as the answer to each held-out prompt and
take the reward model's argmax; compare with the policy's greedy answers on the same
prompts. Then the greedy answer of PPO's KL-regularised optimum for each KL coefficient
beta, pi*(y|x) proportional to pi_SFT(y|x) exp(r(x,y)/beta), over the same closed label
set: what a PPO run that reached its optimum would answer, i.e. the bound on its greedy
gain on those families (small beta: the reward model's argmax; large: the policy's).

    .venv/bin/python bench/reward_classifier_bench.py --reward-model RW/model --policy SFT/model \
        --prompts AD/sft_heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def answer_logprobs(policy, tok, prompts: list[str], answers: list[str], batch: int = 64) -> np.ndarray:
    """log pi(answer | prompt), teacher-forced, summed over the answer's tokens."""
    from stages.alignment.generate import teacher_forced
    from stages.dpo.trainer import answer_logprob
    from stages.ppo.trainer import rollout_batch

    pairs = teacher_forced(tok, prompts, answers)
    return np.concatenate([answer_logprob(policy, rollout_batch(pairs[start:start + batch], tok.pad_token_id))
                           for start in range(0, len(pairs), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True, help="align_data's sft_heldout.jsonl")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from stages.align_data.tasks import FAMILIES
    from stages.alignment.data import read_rows
    from stages.alignment.evaluate import verdict
    from stages.alignment.generate import generate, load_policy
    from stages.alignment.scoring import load_reward_model, score_texts
    from stages.tokenize.bpe import END_OF_TURN

    rm, rm_tok = load_reward_model(args.reward_model, args.threads)
    policy, tok = load_policy(args.policy, args.threads)
    rows = read_rows(args.prompts)
    out = {}
    for family in ("language", "question_type"):
        labels = FAMILIES[family].labels
        fam = [r for r in rows if r["family"] == family]
        prompts = [r["prompt_text"] for r in fam for _ in labels]
        answers = [label + END_OF_TURN for _ in fam for label in labels]
        scores = score_texts(rm, rm_tok, prompts, answers).reshape(len(fam), len(labels))
        logprobs = answer_logprobs(policy, tok, prompts, answers).reshape(len(fam), len(labels))
        picks = [labels[i] for i in scores.argmax(1)]
        greedy = generate(policy, tok, [r["prompt_text"] for r in fam], 8, 64)
        right = np.array([[label == r["answer"] for label in labels] for r in fam])
        optimum = {str(beta): float(right[np.arange(len(fam)), (logprobs + scores / beta).argmax(1)].mean())
                   for beta in (10.0, 3.0, 1.0, 0.5, 0.3, 0.1)}
        out[family] = {"prompts": len(fam),
                       "reward_model_argmax_accuracy": float(np.mean([p == r["answer"] for p, r in zip(picks, fam)])),
                       "policy_greedy_pass_rate": float(np.mean([verdict(r, g.text) for r, g in zip(fam, greedy)])),
                       "policy_argmax_accuracy": float(right[np.arange(len(fam)), logprobs.argmax(1)].mean()),
                       "kl_optimum_greedy_accuracy_by_beta": optimum,
                       "reward_model_top_picks": Counter(picks).most_common(3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
