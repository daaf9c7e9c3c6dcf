"""Pipeline-run bookkeeping on a real (SQLite) MLflow store: what a rerun or resume plans
from a recorded run, and which way each compared figure is better."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.rerun import CONFIG_ARTIFACT, plan_rerun
from pipelines.runs import compare, direction
from stages.core.errors import ConfigError
from stages.core.tracking import Tracker
from tests.conftest import TINY

STAGES = "ingest,dedup,quality,tokenize"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    tracker = Tracker("tiny", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def pipeline_run(threshold: float, metrics: dict) -> str:
        cfg = load_config(TINY, [f"dedup.threshold={threshold}"]).model_dump(mode="json")
        run = tracker.start_run("tiny-x", {"lmforge.kind": "pipeline", "lmforge.stages": STAGES})
        tracker.log_params(run, cfg)
        tracker.client.log_text(run, yaml.safe_dump(cfg), CONFIG_ARTIFACT)
        tracker.log_metrics(run, metrics)
        tracker.finish(run)
        return run

    return tracker, pipeline_run


def test_rerun_plans(store):
    tracker, pipeline_run = store
    client = MlflowClient(tracker.tracking_uri)
    run = pipeline_run(0.6, {})
    downstream = plan_rerun(client, run, "dedup", only=False, overrides=["dedup.threshold=0.7"])
    assert downstream.force == ["dedup", "quality", "tokenize"] and downstream.until == "tokenize"
    assert downstream.config.dedup.threshold == 0.7 and downstream.rerun_of == run
    only = plan_rerun(client, run, "dedup", only=True, overrides=[])
    assert only.force == ["dedup"] and only.until == "dedup" and only.config.dedup.threshold == 0.6
    resume = plan_rerun(client, run, None, only=False, overrides=[])
    assert resume.force == [] and resume.until == "tokenize"
    with pytest.raises(ConfigError, match="not a stage of pipeline run"):
        plan_rerun(client, run, "ppo", only=False, overrides=[])
    with pytest.raises(ConfigError, match="dedup.nonsense"):
        plan_rerun(client, run, "dedup", only=False, overrides=["dedup.nonsense=1"])
    stage_run = tracker.start_run("dedup", {"lmforge.stage": "dedup", "mlflow.parentRunId": run})
    with pytest.raises(ConfigError, match="is not a pipeline run"):
        plan_rerun(client, stage_run, "dedup", only=False, overrides=[])


def test_compare_marks_the_better_value_and_the_differing_config(store):
    tracker, pipeline_run = store
    a = pipeline_run(0.6, {"dedup.kept": 90, "pretrain.final_val_loss": 3.2, "sft.sft.pass_rate": 0.4, "pretrain.steps": 5})
    b = pipeline_run(0.8, {"dedup.kept": 95, "pretrain.final_val_loss": 3.0, "sft.sft.pass_rate": 0.3})
    result = compare(MlflowClient(tracker.tracking_uri), [a, b])
    rows = {r["metric"]: r for r in result["metrics"]}
    assert rows["pretrain.final_val_loss"]["best"] == [1] and rows["sft.sft.pass_rate"]["best"] == [0]
    assert rows["dedup.kept"]["best"] is None  # a count: neither is better
    assert [d["param"] for d in result["differing_config"]] == ["dedup.threshold"]


@pytest.mark.parametrize("metric,expected", [
    ("pretrain.final_val_loss", "min"), ("quantize.chosen.perplexity", "min"), ("deploy.smoke_chat_latency_s", "min"),
    ("ppo.ppo.kl_to_sft", "min"), ("ppo.ppo.pass_rate", "max"), ("reward.pairwise_accuracy", "max"),
    ("pretrain.mean_tokens_per_s", "max"), ("dedup.kept", None), ("ingest.docs", None),
    ("quantize.int4.size_ratio", "min"), ("quantize.int4.pass_rate_delta", "max"), ("quantize.int8.perplexity_delta", "min"),
])
def test_direction(metric, expected):
    assert direction(metric) == expected
