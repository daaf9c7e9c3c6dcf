"""`lmforge run --until ingest` on the tiny config against real local Ray, MLflow
(SQLite in a temp dir) and a Prefect server; then the same run again, reused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from stages.core.digests import sha256_file
from tests.conftest import TINY, last_json, run_cli

pytestmark = pytest.mark.integration


def _prefect(prefect_server, method: str, path: str, **kwargs):
    response = httpx.request(method, prefect_server["api"] + path, timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def test_run_until_ingest_records_lineage_and_reuses_the_cached_stage(home, prefect_server):
    args = ["run", "--config", str(TINY), "--until", "ingest", "--set", f"engines.prefect.port={prefect_server['port']}"]
    first = last_json(run_cli(args).stdout)
    assert set(first) == {"pipeline_run_id", "prefect_flow_run_id", "stages", "cache_hits"}
    assert list(first["stages"]) == ["ingest"] and first["cache_hits"] == []

    # MLflow: parent run tagged with the Prefect flow run, one child run per stage
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(first["pipeline_run_id"])
    child = client.get_run(first["stages"]["ingest"])
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert parent.data.tags["lmforge.prefect_flow_run_id"] == first["prefect_flow_run_id"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["lmforge.complete"] == "true" and len(child.data.tags["lmforge.cache_key"]) == 64
    assert child.data.params["max_mb_per_source"] == "0.4"
    assert child.data.metrics["count.kept"] > 1000 and child.data.metrics["extract_mb_per_s"] > 0
    assert parent.data.metrics["ingest.kept"] == child.data.metrics["count.kept"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "tiny"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's classic runs view

    # the manifest among the artifacts, its digests true of the artifact files
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"manifest.json", "kept", "quarantined.jsonl", "removed.jsonl"} <= artifacts
    local = client.download_artifacts(child.info.run_id, "", dst_path=str(home / "dl"))
    manifest = json.loads((home / "dl" / "manifest.json").read_text())
    assert manifest["stage"] == "ingest" and manifest["counts"]["kept"] == child.data.metrics["count.kept"]
    assert manifest["inputs"]["sources"]["digest"] and manifest["environment_hash"] and manifest["hardware"]["cpu_cores"]
    shards = [k for k in manifest["outputs"] if k.startswith("kept/part-")]
    assert shards and all(manifest["outputs"][k] == sha256_file(home / "dl" / k) for k in shards)
    downloaded = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert downloaded - {"manifest.json"} == set(manifest["outputs"])  # the manifest digests every artifact

    # Prefect: the flow run COMPLETED, one task run named after the stage, the summary artifact
    flow_run = _prefect(prefect_server, "GET", f"/flow_runs/{first['prefect_flow_run_id']}")
    assert flow_run["state_type"] == "COMPLETED"
    assert flow_run["name"] == parent.info.run_name and flow_run["name"].startswith("tiny-")  # one name in both
    task_runs = _prefect(prefect_server, "POST", "/task_runs/filter",
                         json={"flow_runs": {"id": {"any_": [first["prefect_flow_run_id"]]}}})
    assert [(t["name"], t["state_type"]) for t in task_runs] == [("ingest", "COMPLETED")]
    artifacts = _prefect(prefect_server, "POST", "/artifacts/filter",
                         json={"artifacts": {"flow_run_id": {"any_": [first["prefect_flow_run_id"]]}}})
    assert any(first["stages"]["ingest"] in (a.get("data") or "") for a in artifacts)

    # the same run again: the stage is reused, nothing recomputed
    second = last_json(run_cli(args).stdout)
    assert second["cache_hits"] == ["ingest"]
    assert second["stages"]["ingest"] == first["stages"]["ingest"]
    assert second["pipeline_run_id"] != first["pipeline_run_id"]
    ingest_runs = client.search_runs([parent.info.experiment_id], "tags.`lmforge.stage` = 'ingest'")
    assert len(ingest_runs) == 1
    assert client.get_run(second["pipeline_run_id"]).data.tags["lmforge.stage_runs"] == f"ingest={first['stages']['ingest']}"

    # a changed ingest config is a different key: recomputed
    third = last_json(run_cli(args + ["--set", "ingest.max_files_per_source=5"]).stdout)
    assert third["cache_hits"] == [] and third["stages"]["ingest"] != first["stages"]["ingest"]

    # the dry run names the cached run and runs nothing
    dry = run_cli(["run", "--config", str(TINY), "--until", "ingest", "--dry-run"])
    plan = last_json(dry.stdout)
    assert plan["cache_hits"] == ["ingest"] and plan["plan"]["ingest"]["cached_run_id"] == first["stages"]["ingest"]
    assert "DAG: ingest" in dry.stdout and "max_mb_per_source: 0.4" in dry.stdout
    assert len(client.search_runs([parent.info.experiment_id], "tags.`lmforge.kind` = 'pipeline'")) == 3


def test_a_failing_stage_fails_the_flow_with_its_own_message(home, prefect_server, tmp_path):
    args = ["run", "--config", str(TINY), "--until", "ingest", "--set", f"engines.prefect.port={prefect_server['port']}",
            "--set", "ingest.sources=[]", "--set", f"ingest.paths=[{tmp_path / 'nothing-here'}]"]
    proc = run_cli(args, check=False)
    assert proc.returncode == 1
    assert "stage ingest failed" in proc.stderr and "matches no files" in proc.stderr
    summary = last_json(proc.stdout)
    assert summary["failed_stage"] == "ingest" and summary["stages"] == {}
    flow_run = _prefect(prefect_server, "GET", f"/flow_runs/{summary['prefect_flow_run_id']}")
    assert flow_run["state_type"] == "FAILED"
    task_runs = _prefect(prefect_server, "POST", "/task_runs/filter",
                         json={"flow_runs": {"id": {"any_": [summary["prefect_flow_run_id"]]}}})
    assert [(t["name"], t["state_type"]) for t in task_runs] == [("ingest", "FAILED")]
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(summary["pipeline_run_id"])
    assert parent.info.status == "FAILED" and "matches no files" in parent.data.tags["lmforge.error"]
