"""Alignment methods side by side on one config: each method's path run up to that method
(`lmforge run --until METHOD --set pipeline.alignment=METHOD`; everything before it shared by
the cache), then, per held-out family, the pass rate of the base model, of SFT and of each
method, each method's gain over SFT with its 95 % bootstrap interval, and each stage's wall time.

    .venv/bin/python bench/methods_bench.py --config pipelines/configs/finetune.yaml --methods grpo ppo dpo
    .venv/bin/python bench/methods_bench.py --config pipelines/configs/demo.yaml --methods ppo dpo grpo

Runs in LMFORGE_HOME (a fresh one measures every stage; a used one reuses what is cached).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def run_path(config: str, method: str, extra: list[str]) -> dict:
    args = [LMFORGE, "run", "--config", config, "--until", method, "--set", f"pipeline.alignment={method}"]
    for item in extra:
        args += ["--set", item]
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--methods", nargs="+", default=["grpo", "ppo", "dpo"], choices=["grpo", "ppo", "dpo"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="STAGE.field=value, for every run")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from stages.core.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri())
    summaries = {m: run_path(args.config, m, args.overrides) for m in args.methods}
    first = summaries[args.methods[0]]["stages"]
    sft = client.get_run(first["sft"]).data.metrics
    wall = {name: client.get_run(run_id).data.metrics.get("duration_s") for name, run_id in first.items()
            if name in ("import_model", "pretrain", "sft")}
    method_metrics = {}
    for method, summary in summaries.items():
        metrics = client.get_run(summary["stages"][method]).data.metrics
        method_metrics[method] = metrics
        wall[method] = metrics.get("duration_s")
        if "reward" in summary["stages"]:
            wall["reward"] = client.get_run(summary["stages"]["reward"]).data.metrics.get("duration_s")
    families = sorted({k.split(".")[2] for k in sft if k.startswith("sft.pass_rate.") and k.count(".") == 2})
    header = ["family", "base", "sft", *args.methods, *[f"{m} - sft (95% CI)" for m in args.methods]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for family in families + ["(macro)"]:
        key = "pass_rate" if family == "(macro)" else f"pass_rate.{family}"
        cells = [family, _fmt(sft.get(f"base.{key}")), _fmt(sft.get(f"sft.{key}"))]
        cells += [_fmt(method_metrics[m].get(f"{m}.{key}")) for m in args.methods]
        for m in args.methods:
            gain = f"{m}_minus_sft.{key}" if family != "(macro)" else f"{m}_minus_sft.pass_rate"
            cells.append(f"{_fmt(method_metrics[m].get(gain + '.mean'), signed=True)} "
                         f"({_fmt(method_metrics[m].get(gain + '.ci_low'), signed=True)}.."
                         f"{_fmt(method_metrics[m].get(gain + '.ci_high'), signed=True)})")
        print("| " + " | ".join(cells) + " |")
    print()
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items() if v is not None))


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


if __name__ == "__main__":
    main()
