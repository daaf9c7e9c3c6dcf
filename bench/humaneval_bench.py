"""HumanEval pass@1 (greedy) of registered model versions, through lm-evaluation-harness: the
base model a pipeline imported and what its alignment made of it, side by side, with each run's
wall time. The same task quantize runs when ``quantize.lm_eval.humaneval`` > 0.

    LMFORGE_HOME=/tmp/fthome .venv/bin/python bench/humaneval_bench.py \\
        lmforge-finetune-lm@latest-pretrain lmforge-finetune-lm@latest-grpo [--limit 164]

A name is ``<registered model>@<alias>`` in the home's MLflow registry, or a model folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def model_folder(spec: str, scratch: Path) -> Path:
    if Path(spec).is_dir():
        return Path(spec)
    import mlflow
    from mlflow.tracking import MlflowClient

    from stages.core.tracking import default_tracking_uri

    name, _, alias = spec.partition("@")
    client = MlflowClient(default_tracking_uri())
    version = client.get_model_version_by_alias(name, alias)
    mlflow.set_tracking_uri(default_tracking_uri())
    return Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(scratch / spec.replace("@", "_"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--limit", type=int, default=164, help="the first N problems")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from stages.alignment import harness
    from stages.alignment.humaneval import load_problems

    with tempfile.TemporaryDirectory(prefix="humaneval-bench-") as scratch:
        tasks = Path(scratch) / "tasks"
        name = harness.write_humaneval_task(tasks, load_problems(limit=args.limit), args.max_tokens)
        print(f"| model | HumanEval pass@1 ({args.limit} problems, greedy, {args.max_tokens} tokens) | solved | "
              f"wall time |")
        print("|---|---|---|---|")
        for spec in args.models:
            folder = model_folder(spec, Path(scratch))
            t0 = time.time()
            figures = harness.evaluate(folder, tasks, [name], batch_size=args.batch_size)
            score = figures["humaneval.pass_at_1"]
            print(f"| {spec} | {score:.3f} (± {figures.get('humaneval.pass_at_1_stderr', 0):.3f}) | "
                  f"{round(score * args.limit)} | {time.time() - t0:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
