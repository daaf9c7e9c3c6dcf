"""The ray-job executor against a real local Ray head (`ray start --head`): each stage is
a Ray job running `python -m stages ...`, its log streamed into the Prefect task, its
result read back from MLflow with the same lineage as inline."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, free_port, kill_ray_node, last_json, run_cli

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head of our own (2 CPUs, dashboard = Jobs API on a free loopback port), stopped by handle."""
    port, dash = free_port(), free_port()
    log = open(tmp_path / "ray-head.log", "w")
    temp = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # Unix socket paths must stay under 107 bytes
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
         # every port of our own: another Ray on this machine (a user's, a pipeline's) keeps its defaults
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}",
         f"--temp-dir={temp}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/api/version", timeout=2).status_code in (200, 401):
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "ray-head.log").read_text()
        time.sleep(1)
    time.sleep(3)
    yield {"jobs": url, "address": f"127.0.0.1:{port}"}
    kill_ray_node(proc)
    log.close()
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_executor_runs_each_stage_as_a_job(home, prefect_server, ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    proc = run_cli(["run", "--config", str(TINY), "--until", "dedup",
                    "--set", f"engines.prefect.port={prefect_server['port']}",
                    "--set", "engines.executor=ray-job", "--set", f"engines.ray_job.address={ray_head['jobs']}",
                    "--set", "engines.ray_job.poll_s=0.5"])
    summary = last_json(proc.stdout)
    assert list(summary["stages"]) == ["ingest", "dedup"]
    # the job's own output (the stage's progress) streamed into the Prefect task log
    assert "submitted Ray job lmforge-ingest-" in proc.stderr
    assert "dedup: signatures" in proc.stderr and "[lmforge-dedup-" in proc.stderr

    from pipelines.executors import use_cluster_token

    use_cluster_token()
    client = JobSubmissionClient(ray_head["jobs"])
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("lmforge.pipeline_run_id")]
    assert sorted(j.metadata["lmforge.stage"] for j in jobs) == ["dedup", "ingest"]
    assert all(j.status == JobStatus.SUCCEEDED for j in jobs)
    assert all(j.metadata["lmforge.pipeline_run_id"] == summary["pipeline_run_id"] for j in jobs)

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    dedup = mlflow.get_run(summary["stages"]["dedup"])
    assert dedup.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
    # the executor read each stage's result from MLflow: the stage run carries its job's submission id, and
    # the pipeline run records which run each job produced
    submitted = {j.metadata["lmforge.stage"]: j.submission_id for j in jobs}
    assert dedup.data.tags["lmforge.ray_submission_id"] == submitted["dedup"]
    parent = mlflow.get_run(summary["pipeline_run_id"]).data.tags
    assert json.loads(parent["lmforge.job.ingest"]) == {"submission_id": submitted["ingest"],
                                                        "run_id": summary["stages"]["ingest"], "cache_hit": False}
    mlflow.download_artifacts(dedup.info.run_id, "manifest.json", dst_path=str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["inputs"]["docs"]["run_id"] == summary["stages"]["ingest"]

    # same config again: both stages are cache hits, decided inside the jobs
    again = last_json(run_cli(["run", "--config", str(TINY), "--until", "dedup",
                               "--set", f"engines.prefect.port={prefect_server['port']}",
                               "--set", "engines.executor=ray-job",
                               "--set", f"engines.ray_job.address={ray_head['jobs']}"]).stdout)
    assert again["cache_hits"] == ["ingest", "dedup"]
    assert again["stages"] == summary["stages"]
    recorded = json.loads(mlflow.get_run(again["pipeline_run_id"]).data.tags["lmforge.job.dedup"])
    assert recorded["cache_hit"] is True and recorded["run_id"] == summary["stages"]["dedup"]
