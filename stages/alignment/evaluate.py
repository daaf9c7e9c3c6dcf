"""Held-out evaluation every alignment stage reports: checker pass rate per family (with
a bootstrap interval over prompts), beside the majority-answer baseline, and sample
generations for the MLflow table."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stages.align_data.tasks import FAMILIES, Example

EVAL_FILE = "heldout_eval.jsonl"
SAMPLES = "samples.json"


def checkable(rows: list[dict], per_family: int | None) -> list[dict]:
    """Held-out SFT rows of checkable families (QA is scored by loss only), capped per family in order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for row in rows:
        if row["family"] in FAMILIES and (per_family is None or seen[row["family"]] < per_family):
            seen[row["family"]] += 1
            out.append(row)
    return out


def verdict(row: dict, response: str) -> bool:
    example = Example(row["family"], row["prompt"], row["answer"], row["source_id"])
    return bool(FAMILIES[row["family"]].check(example, response))


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mean over prompts."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def pass_rates(rows: list[dict], verdicts: list[bool], resamples: int, seed: int) -> dict[str, float]:
    """``pass_rate`` (macro mean over families) with its interval, and ``pass_rate.<family>``."""
    by_family: dict[str, list[float]] = defaultdict(list)
    for row, ok in zip(rows, verdicts):
        by_family[row["family"]].append(float(ok))
    out: dict[str, float] = {}
    for family, values in sorted(by_family.items()):
        out[f"pass_rate.{family}"] = float(np.mean(values))
    if by_family:
        out["pass_rate"] = float(np.mean([np.mean(v) for v in by_family.values()]))
        lo, hi = bootstrap_ci(np.array([float(v) for v in verdicts]), resamples, seed)
        out["pass_rate_micro"] = float(np.mean(verdicts))
        out["pass_rate_micro_ci_low"], out["pass_rate_micro_ci_high"] = lo, hi
    return out


def paired_difference(after: list[float], before: list[float], resamples: int, seed: int) -> dict[str, float]:
    """Mean of (after - before) over the same prompts with a bootstrap interval: a gain
    whose interval excludes 0 is more than noise."""
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    lo, hi = bootstrap_ci(diff, resamples, seed)
    return {"mean": float(diff.mean()) if diff.size else float("nan"), "ci_low": lo, "ci_high": hi}


def family_gains(rows: list[dict], after: list[bool], before: list[bool], resamples: int,
                 seed: int) -> dict[str, float]:
    """``pass_rate.<family>.{mean,ci_low,ci_high}``: the paired gain per family, because a
    gain on the families a stage trains on can hide behind the others in the overall mean."""
    out: dict[str, float] = {}
    for family in sorted({row["family"] for row in rows}):
        idx = [k for k, row in enumerate(rows) if row["family"] == family]
        gain = paired_difference([float(after[k]) for k in idx], [float(before[k]) for k in idx], resamples, seed)
        out.update({f"pass_rate.{family}.{key}": value for key, value in gain.items()})
    return out


def sample_table(rows: list[dict], answers: dict[str, list[str]], verdicts: dict[str, list[bool]],
                 per_family: int) -> dict[str, list[Any]]:
    """Columns for ``MlflowClient.log_table``: prompt, reference, then each model's answer and verdict."""
    table: dict[str, list[Any]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)
    for k, row in enumerate(rows):
        if seen[row["family"]] >= per_family:
            continue
        seen[row["family"]] += 1
        table["family"].append(row["family"])
        table["prompt"].append(row["prompt"])
        table["reference"].append(row["answer"])
        for model, texts in answers.items():
            table[f"{model}_answer"].append(texts[k])
            table[f"{model}_pass"].append(bool(verdicts[model][k]))
    return dict(table)


def write_heldout(out: Path, rows: list[dict], answers: dict[str, list[str]], verdicts: dict[str, list[bool]],
                  per_family: int, rewards: dict[str, list[float]] | None = None) -> None:
    """Every held-out prompt with each model's answer, verdict (and reward) as JSONL, and the
    per-family sample table that ``register_policy`` logs to MLflow."""
    with open(out / EVAL_FILE, "w", encoding="utf-8") as handle:
        for k, row in enumerate(rows):
            record = {"id": row["id"], "family": row["family"], "prompt": row["prompt"], "reference": row["answer"]}
            for name in answers:
                record[f"{name}_answer"] = answers[name][k]
                record[f"{name}_pass"] = verdicts[name][k]
                if rewards:
                    record[f"{name}_reward"] = rewards[name][k]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / SAMPLES).write_text(json.dumps(sample_table(rows, answers, verdicts, per_family), ensure_ascii=False,
                                          indent=1))
