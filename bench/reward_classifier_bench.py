"""Is the reward model a better judge than the policy it trains? For each label family
(language, question_type) score every label as the answer to each held-out prompt and
take the reward model's argmax; compare with the policy's greedy answers on the same
prompts. PPO's KL-regularised optimum is close to the reward model's argmax, so this
bounds what PPO can gain on those families.

    .venv/bin/python bench/reward_classifier_bench.py --reward-model RW/model --policy SFT/model \
        --prompts AD/sft_heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


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
        scores = np.asarray(score_texts(rm, rm_tok, prompts, [label + END_OF_TURN for _ in fam for label in labels]))
        picks = [labels[i] for i in scores.reshape(len(fam), len(labels)).argmax(1)]
        greedy = generate(policy, tok, [r["prompt_text"] for r in fam], 8, 64)
        out[family] = {"prompts": len(fam),
                       "reward_model_argmax_accuracy": float(np.mean([p == r["answer"] for p, r in zip(picks, fam)])),
                       "policy_greedy_pass_rate": float(np.mean([verdict(r, g.text) for r, g in zip(fam, greedy)])),
                       "reward_model_top_picks": Counter(picks).most_common(3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
