"""`lmforge schedule` on a real local Prefect server: the deployment is registered with
its cron schedule and parameters, its next runs are queued, and a run triggered on demand
(`prefect deployment run`) is executed by a real process worker to COMPLETED, writing its
pipeline run into the MLflow store the deployment was registered with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, TINY, last_json, run_cli

pytestmark = pytest.mark.integration
POOL = "lmforge-test-pool"


def test_schedule_registers_queues_and_runs_on_demand(home, prefect_server):
    env = {"PREFECT_API_URL": prefect_server["api"]}
    registered = last_json(run_cli(["schedule", "--config", str(TINY), "--cron", "0 3 * * *", "--name", "nightly-test",
                                    "--until", "ingest", "--pool", POOL], env=env).stdout)
    assert registered["deployment"] == "lmforge-pipeline/nightly-test"
    assert registered["parameters"] == {"config_path": str(TINY.resolve()), "overrides": [], "until": "ingest"}

    listed, deadline = {}, time.time() + 120
    while time.time() < deadline:  # the server's scheduler queues the next runs of the cron schedule
        found = last_json(run_cli(["schedules"], env=env).stdout)["deployments"]
        listed = next(d for d in found if d["deployment"] == "lmforge-pipeline/nightly-test")
        if listed["next_runs"]:
            break
        time.sleep(5)
    assert listed["schedules"] == ["0 3 * * *"] and listed["pool"] == POOL
    assert listed["next_runs"] and all("T03:00:00" in t for t in listed["next_runs"])

    bad = run_cli(["schedule", "--config", str(TINY), "--cron", "every night"], env=env, check=False)
    assert bad.returncode == 2 and "--cron" in bad.stderr

    prefect = str(Path(sys.executable).parent / "prefect")
    triggered = subprocess.run([prefect, "deployment", "run", "lmforge-pipeline/nightly-test"], capture_output=True,
                               text=True, timeout=120, env={**os.environ, **env}, cwd=REPO)
    assert triggered.returncode == 0, triggered.stderr
    flow_run_id = next(line.split()[-1] for line in triggered.stdout.splitlines() if "UUID" in line)
    worker = subprocess.Popen([prefect, "worker", "start", "--pool", POOL, "--type", "process"],
                              env={**os.environ, **env}, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        state, deadline = None, time.time() + 600
        while time.time() < deadline and state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            time.sleep(3)
            state = httpx.get(f"{prefect_server['api']}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
        assert state == "COMPLETED"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # under CI load its shutdown can outlast a minute: not what this checks
            worker.kill()
            worker.wait(timeout=30)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              filter_string=f"tags.`lmforge.prefect_flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["lmforge.stages"] == "ingest"
