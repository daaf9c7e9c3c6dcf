"""Where does the reward model go wrong, and could the policy's own likelihood fix it?

Issue 5 asks for 0.8 held-out pair accuracy; the demo's reward model sits near 0.77. This
prints the figures that say why, on the demo's own models and data:

- count_words: accuracy on (right count, right count +-1) for every held-out prompt, by
  sentence length and by the sign of the error. A model that counts is right on both
  signs; one that has learnt a prior over numbers ("larger is better") is right on one
  sign only, and its per-length figures swing with how common each number is.
- sentiment: pair accuracy split by which letter is right (a letter preference shows as a
  gap between the two).
- nth_word: the policy's greedy pass rate by ordinal: whether it can copy a word from a
  known position at all (the first word is one token after the colon).
- reward + beta * log pi_SFT(answer | prompt), beta chosen on 1,500 training pairs:
  whether the policy's likelihood carries what the reward head misses.

    .venv/bin/python bench/reward_errors_bench.py --reward-model RW/model --policy SFT/model \
        --align-data AD
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reward_classifier_bench import answer_logprobs

BETAS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)


def rate(flags) -> str:
    flags = list(flags)
    return f"{np.mean(flags):.3f} of {len(flags)}" if flags else "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", type=Path, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--align-data", type=Path, required=True, help="align_data's output folder")
    parser.add_argument("--train-pairs", type=int, default=1500, help="training pairs beta is chosen on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from stages.alignment.data import read_rows
    from stages.alignment.evaluate import verdict
    from stages.alignment.generate import generate, load_policy
    from stages.alignment.scoring import load_reward_model, score_texts
    from stages.tokenize.bpe import END_OF_TURN

    rm, rm_tok = load_reward_model(args.reward_model, args.threads)
    policy, tok = load_policy(args.policy, args.threads)
    prompts = read_rows(args.align_data / "sft_heldout.jsonl")
    out: dict = {}

    counts = [r for r in prompts if r["family"] == "count_words"]
    offsets = [(r, d) for r in counts for d in (-1, 1)]
    texts = [r["prompt_text"] for r, _ in offsets]
    right = score_texts(rm, rm_tok, texts, [r["answer"] + END_OF_TURN for r, _ in offsets])
    wrong = score_texts(rm, rm_tok, texts, [str(int(r["answer"]) + d) + END_OF_TURN for r, d in offsets])
    by_length, by_sign = defaultdict(list), defaultdict(list)
    for (r, d), a, b in zip(offsets, right, wrong):
        by_length[int(r["answer"])].append(a > b)
        by_sign[f"{d:+d}"].append(a > b)
    out["count_words_off_by_one"] = {"all": rate(a > b for a, b in zip(right, wrong)),
                                     "by_error_sign": {k: rate(v) for k, v in sorted(by_sign.items())},
                                     "by_length": {k: rate(v) for k, v in sorted(by_length.items())}}

    pairs = read_rows(args.align_data / "pref_heldout.jsonl")
    train = read_rows(args.align_data / "pref_train.jsonl")
    train = random.Random(0).sample(train, min(args.train_pairs, len(train)))
    margins = {}
    for name, rows in (("heldout", pairs), ("train", train)):
        texts = [r["prompt_text"] for r in rows]
        reward = (score_texts(rm, rm_tok, texts, [r["response_text"] for r in rows])
                  - score_texts(rm, rm_tok, texts, [r["rejected_text"] for r in rows]))
        logprob = (answer_logprobs(policy, tok, texts, [r["response_text"] for r in rows])
                   - answer_logprobs(policy, tok, texts, [r["rejected_text"] for r in rows]))
        margins[name] = (reward, logprob)

    reward, logprob = margins["heldout"]
    letter = defaultdict(list)
    for r, m in zip(pairs, reward):
        if r["family"] == "sentiment" and r["rejected"].split(":")[0] in ("A", "B"):  # not a wrong-task pair
            letter[f"{r['answer'][0]}_right"].append(m > 0)
    out["sentiment_by_right_letter"] = {k: rate(v) for k, v in sorted(letter.items())}

    ordinal = defaultdict(list)
    nth = [r for r in prompts if r["family"] == "nth_word"]
    for r, g in zip(nth, generate(policy, tok, [r["prompt_text"] for r in nth], 12, 64)):
        ordinal[r["prompt"].split()[3]].append(verdict(r, g.text))
    out["policy_nth_word_greedy_by_ordinal"] = {k: rate(v) for k, v in sorted(ordinal.items())}

    train_reward, train_logprob = margins["train"]
    train_acc = {beta: float(np.mean(train_reward + beta * train_logprob > 0)) for beta in BETAS}
    best = max(BETAS, key=lambda beta: (train_acc[beta], -beta))
    family = np.array([r["family"] for r in pairs])

    def heldout(beta: float) -> dict:
        ok = reward + beta * logprob > 0
        return {"all": round(float(ok.mean()), 3),
                **{f: round(float(ok[family == f].mean()), 3) for f in sorted(set(family))}}

    out["pair_accuracy"] = {"reward_model": heldout(0.0),
                            "policy_logprob_only": round(float(np.mean(logprob > 0)), 3),
                            "train_accuracy_by_beta": {str(b): round(a, 3) for b, a in train_acc.items()},
                            "beta_chosen_on_train": best,
                            "reward_plus_beta_logprob": heldout(best)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
