"""What the pipeline dashboard shows, gathered from MLflow: per pipeline run, the DAG
(stage states, durations, cache hits, the stages a partial run left out), a stage
timeline, the data funnel and why documents left it, training curves (pretrain, SFT,
reward model, PPO/DPO), pass rates per task family, the quantization trade-off with the
chosen variant, the deploy gate's decision and the served model's latency, throughput
and errors. Plain JSON, so the page needs nothing but itself."""

from __future__ import annotations

from typing import Any

from stages.core import names
from pipelines import runs

def _declared() -> list:
    """(name, dashboard declaration) of every registered stage, in DAG order: what the page draws of each."""
    from stages.registry import dag_order, stage_class

    return [(name, stage_class(name).dashboard) for name in dag_order()]


def _history(client, run_id: str, metric: str) -> list[list[float]]:
    return [[m.step, m.value] for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def _funnel(m: dict[str, float]) -> list[dict[str, Any]]:
    steps = []
    for stage, shown in _declared():
        step = shown.funnel
        if step is None or not all(f"{stage}.{d}" in m for d in step.docs[:1]):
            continue
        mb = m.get(f"{stage}.{step.mb}") if step.mb else None
        steps.append({"step": stage, "docs": sum(m.get(f"{stage}.{d}", 0) for d in step.docs),
                      "mb": None if step.mb is None else (mb or 0) * step.mb_per_unit,
                      **({"tokens": m.get(f"{stage}.{step.tokens}")} if step.tokens else {})})
    return steps


def _reasons(m: dict[str, float]) -> dict[str, dict[str, float]]:
    """{stage: {"removed: why" or "quarantined: why": documents}}: why documents left each document stage."""
    out: dict[str, dict[str, float]] = {}
    for stage, shown in _declared():
        reasons: dict[str, float] = {}
        quarantined = f"{stage}.quarantined."
        for key, value in m.items():
            if not value or not key.startswith(f"{stage}."):
                continue
            figure = key[len(stage) + 1:]
            if shown.quarantines and key.startswith(quarantined):
                reasons[f"quarantined: {key[len(quarantined):]}"] = value
            for pattern, why in shown.removed.items():
                part = _star(pattern, figure)
                if part is not None:
                    reasons[f"removed: {why.replace('*', part)}"] = value
        if reasons:
            out[stage] = reasons
    return out


def _star(pattern: str, figure: str) -> str | None:
    """What ``*`` stands for when ``figure`` matches ``pattern`` (``""`` for a pattern without one), else None."""
    head, star, tail = pattern.partition("*")
    if not star:
        return "" if figure == pattern else None
    if figure.startswith(head) and figure.endswith(tail) and len(figure) > len(head) + len(tail):
        part = figure[len(head):len(figure) - len(tail)]
        return part if "." not in part else None
    return None


def _pass_rates(m: dict[str, float]) -> dict[str, dict[str, float]]:
    rates: dict[str, dict[str, float]] = {}
    for stage, shown in _declared():
        for model in shown.pass_rates:
            prefix = f"{stage}.{model}.pass_rate."
            per_family = {k[len(prefix):]: v for k, v in m.items()
                          if k.startswith(prefix) and "." not in k[len(prefix):]}
            if per_family:
                rates[model] = per_family
    return rates


def _quantization(m: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    variants = [k.split(".")[1] for k in m if k.startswith("quantize.") and k.endswith(".size_ratio")]
    for variant in sorted(variants, key=lambda v: (v != "fp32", v)):
        if f"quantize.{variant}.size_ratio" in m:
            rows.append({"variant": variant, "size_ratio": m[f"quantize.{variant}.size_ratio"],
                         "perplexity_delta": m.get(f"quantize.{variant}.perplexity_delta"),
                         "pass_rate_delta": m.get(f"quantize.{variant}.pass_rate_delta"),
                         "ms_per_token_b1": m.get(f"quantize.{variant}.latency_ms_per_token_b1")})
    return rows


def _lm_eval(m: dict[str, float]) -> dict[str, dict[str, float]]:
    """variant -> {task: value}: lm-evaluation-harness's checker tasks (``pass``) and the held-out perplexity
    task (``bits_per_byte``), as quantize logged them per variant."""
    out: dict[str, dict[str, float]] = {}
    for key, value in m.items():
        if not key.startswith("quantize.") or ".lm_eval." not in key:
            continue
        variant, rest = key[len("quantize."):].split(".lm_eval.", 1)
        task, _, metric = rest.rpartition(".")
        if metric in ("pass", "bits_per_byte"):
            out.setdefault(variant, {})[task if metric == "pass" else "bits_per_byte"] = value
    return {v: out[v] for v in sorted(out, key=lambda v: (v != "fp32", v))}


def _chart_stages() -> dict[str, str]:
    """chart or panel -> the stage that fills it (first declared), so the page can say which stage a run
    left out when a chart is empty."""
    owner: dict[str, str] = {}
    for stage, shown in _declared():
        for chart in (*shown.curves, *shown.panels, *(["passrate"] if shown.pass_rates else []),
                      *(["funnel"] if shown.funnel else []), *(["reasons"] if shown.quarantines else [])):
            owner.setdefault(chart, stage)
    return owner


def _stage_tags(client, stage_runs: dict[str, str], stage: str) -> dict[str, str]:
    if stage not in stage_runs:
        return {}
    try:
        return client.get_run(stage_runs[stage]).data.tags
    except Exception:  # noqa: BLE001 - the run was garbage-collected: nothing to show
        return {}


def _timeline(stages: list[dict[str, Any]], started: int) -> list[dict[str, Any]]:
    """One bar per stage of this pipeline run, in the order it ran; a reused stage sits where it was looked up
    (after the stage before it) with the duration of the run that computed it, marked."""
    bars, clock = [], started
    for s in stages:
        if s["started"] is not None:
            start = s["started"]
            end = s["ended"] or start
            clock = max(clock, end)
        elif s["state"] == "cached":
            start = end = clock
        else:
            continue
        bars.append({"stage": s["stage"], "start": start, "end": end, "reused": s["state"] == "cached",
                     "duration_s": s["duration_s"], "state": s["state"]})
    return bars


def pipeline_view(client, run) -> dict[str, Any]:
    from pipelines.dag import pipeline_choices, stages_to_run

    described = runs.describe(client, run)
    m = run.data.metrics
    stage_runs = {s["stage"]: s["run_id"] for s in described["stages"] if s["run_id"]}
    curves: dict[str, list[dict[str, Any]]] = {}
    for stage, shown in _declared():
        for chart, metrics in shown.curves.items():
            lines = [{"name": f"{stage} {metric}", "points": _history(client, stage_runs[stage], metric)}
                     for metric in metrics if stage in stage_runs]
            curves.setdefault(chart, []).extend(c for c in lines if c["points"])
    planned = [s["stage"] for s in described["stages"]]
    dag = stages_to_run(None, pipeline_choices(run.data.params))
    left_out = [name for name in dag if name not in planned]  # --until, or a rerun with --only
    serving = {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("deploy.latency_p")}
    deploy = _stage_tags(client, stage_runs, "deploy")
    quantize = _stage_tags(client, stage_runs, "quantize")
    return {
        "id": run.info.run_id, "name": run.info.run_name, "state": described["state"],
        "started": run.info.start_time, "experiment": described["experiment"], "rerun_of": described["rerun_of"],
        "stages": described["stages"], "left_out": left_out, "timeline": _timeline(described["stages"],
                                                                                  run.info.start_time),
        "funnel": _funnel(m), "reasons": _reasons(m), "curves": curves, "pass_rates": _pass_rates(m),
        "chart_stage": _chart_stages(),
        "quantization": _quantization(m),
        "lm_eval": _lm_eval(m),
        "quantized": {"chosen": quantize.get(names.TAG_QUANTIZED_VARIANT), "why": quantize.get(names.TAG_CHOICE)},
        "gate": {"promoted": deploy.get(names.TAG_PROMOTED), "reason": deploy.get(names.TAG_GATE),
                 "served_version": deploy.get(names.TAG_SERVED_VERSION),
                 "candidate_version": deploy.get(names.TAG_CANDIDATE_VERSION)} if deploy else {},
        "serving": serving,
        "serving_load": {k: m[f"deploy.{k}"] for k in ("throughput_tokens_per_s", "errors", "requests",
                                                        "burst_requests") if f"deploy.{k}" in m},
    }


def _whole(run) -> bool:
    """A finished run of the whole DAG (not --until, not a rerun with --only): what the page opens on."""
    from pipelines.dag import pipeline_choices, stages_to_run

    planned = [s for s in run.data.tags.get(names.TAG_STAGES, "").split(",") if s]
    dag = stages_to_run(None, pipeline_choices(run.data.params))
    return run.info.status == "FINISHED" and bool(planned) and planned[-1] == dag[-1]


def collect(client, run_id: str | None = None, limit: int = 10) -> dict[str, Any]:
    """The chosen run first (default: the newest run of the whole DAG, else the newest), then the other
    recent runs for the picker."""
    recent = runs.recent_pipeline_runs(client, limit)
    if run_id:
        chosen = runs.get_pipeline_run(client, run_id)
    else:
        chosen = next((r for r in recent if _whole(r)), recent[0] if recent else None)
    if chosen is not None:
        recent = [chosen] + [r for r in recent if r.info.run_id != chosen.info.run_id][: limit - 1]
    return {"runs": [pipeline_view(client, r) for r in recent]}
