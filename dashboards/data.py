"""What the pipeline dashboard shows, gathered from MLflow: per pipeline run, the DAG
(stage states, durations, cache hits), the data funnel, training curves (pretrain, SFT,
reward model, PPO/DPO), pass rates per task family, the quantization trade-off and the
served model's latency. Plain JSON, so the page needs nothing but itself."""

from __future__ import annotations

from typing import Any

from pipelines import runs

CURVES = {  # chart -> (stage, metric) series, as the stages log them step by step
    "pretrain": [("pretrain", "loss"), ("pretrain", "val_loss")],
    "sft": [("sft", "loss"), ("sft", "heldout_loss"), ("dpo", "loss")],
    "reward": [("reward", "accuracy"), ("reward", "heldout_accuracy")],
    "ppo": [("ppo", "reward"), ("ppo", "kl"), ("ppo", "rollout_pass_rate")],
}
FAMILY_SOURCES = [("sft", "base"), ("sft", "sft"), ("ppo", "ppo"), ("dpo", "dpo")]
QUANT_VARIANTS = ["fp32", "int8", "int4", "gguf-q8_0"]


def _history(client, run_id: str, metric: str) -> list[list[float]]:
    return [[m.step, m.value] for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def _funnel(m: dict[str, float]) -> list[dict[str, Any]]:
    steps = []
    for stage, mb_key in (("ingest", "ingest.text_mb"), ("dedup", "dedup.chars_kept"), ("quality", "quality.chars_kept")):
        if f"{stage}.kept" in m:
            mb = m.get(mb_key)
            steps.append({"step": stage, "docs": m[f"{stage}.kept"],
                          "mb": mb if stage == "ingest" else (mb or 0) / 1e6})
    if "tokenize.train_docs" in m:
        steps.append({"step": "tokenize", "docs": m["tokenize.train_docs"] + m.get("tokenize.val_docs", 0),
                      "mb": None, "tokens": m.get("tokenize.train_tokens")})
    return steps


def _pass_rates(m: dict[str, float]) -> dict[str, dict[str, float]]:
    rates: dict[str, dict[str, float]] = {}
    for stage, model in FAMILY_SOURCES:
        prefix = f"{stage}.{model}.pass_rate."
        per_family = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        if per_family:
            rates[model] = per_family
    return rates


def _quantization(m: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for variant in QUANT_VARIANTS:
        if f"quantize.{variant}.size_ratio" in m:
            rows.append({"variant": variant, "size_ratio": m[f"quantize.{variant}.size_ratio"],
                         "perplexity_delta": m.get(f"quantize.{variant}.perplexity_delta"),
                         "pass_rate_delta": m.get(f"quantize.{variant}.pass_rate_delta"),
                         "ms_per_token_b1": m.get(f"quantize.{variant}.latency_ms_per_token_b1")})
    return rows


def pipeline_view(client, run) -> dict[str, Any]:
    described = runs.describe(client, run)
    m = run.data.metrics
    stage_runs = {s["stage"]: s["run_id"] for s in described["stages"] if s["run_id"]}
    curves: dict[str, list[dict[str, Any]]] = {}
    for chart, series in CURVES.items():
        curves[chart] = [{"name": f"{stage} {metric}", "points": _history(client, stage_runs[stage], metric)}
                         for stage, metric in series if stage in stage_runs]
        curves[chart] = [c for c in curves[chart] if c["points"]]
    serving = {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("deploy.latency_p")}
    return {
        "id": run.info.run_id, "name": run.info.run_name, "state": described["state"],
        "started": run.info.start_time, "experiment": described["experiment"], "rerun_of": described["rerun_of"],
        "stages": described["stages"], "funnel": _funnel(m), "curves": curves, "pass_rates": _pass_rates(m),
        "quantization": _quantization(m), "serving": serving,
    }


def collect(client, run_id: str | None = None, limit: int = 10) -> dict[str, Any]:
    """The chosen run (default: the newest) first, then the other recent runs for the picker."""
    recent = runs.recent_pipeline_runs(client, limit)
    if run_id:
        chosen = runs.get_pipeline_run(client, run_id)
        recent = [chosen] + [r for r in recent if r.info.run_id != run_id][: limit - 1]
    return {"runs": [pipeline_view(client, r) for r in recent]}
