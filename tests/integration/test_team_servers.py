"""infra/team: PostgreSQL from Debian's `postgresql`, an MLflow tracking server and a Prefect
server on it, all on 127.0.0.1; lmforge pointed at them by MLFLOW_TRACKING_URI and
PREFECT_API_URL runs the tiny pipeline through tokenize unchanged, and the runs land in
PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DATA_DIR, REPO, TINY, free_port, last_json, need_debian_package, run_cli

pytestmark = pytest.mark.integration


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    need_debian_package("postgresql", bool(found))
    return found[-1].parent


def test_tiny_pipeline_on_postgres_backed_mlflow_and_prefect():
    pg_bin = _postgres_bin()
    home = Path(tempfile.mkdtemp(prefix="lmforge-team-", dir="/tmp"))  # the postgres user must reach its data dir
    home.chmod(0o755)
    ports = {"LMFORGE_PG_PORT": free_port(), "LMFORGE_MLFLOW_PORT": free_port(), "LMFORGE_PREFECT_PORT": free_port()}
    env = {**os.environ, "LMFORGE_HOME": str(home), "LMFORGE_DATA_DIR": str(DATA_DIR),
           **{k: str(v) for k, v in ports.items()}}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    try:
        started = subprocess.run(["bash", "infra/team/start.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=600)
        assert started.returncode == 0, started.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
                       if line.startswith("export "))
        assert exports == {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['LMFORGE_MLFLOW_PORT']}",
                           "PREFECT_API_URL": f"http://127.0.0.1:{ports['LMFORGE_PREFECT_PORT']}/api"}

        summary = last_json(run_cli(["run", "--config", str(TINY), "--until", "tokenize"],
                                    env={**{k: env[k] for k in ("LMFORGE_HOME", "LMFORGE_DATA_DIR")}, **exports}).stdout)
        assert list(summary["stages"]) == ["ingest", "dedup", "quality", "tokenize"]
        client = MlflowClient(exports["MLFLOW_TRACKING_URI"])
        tokenize = client.get_run(summary["stages"]["tokenize"])
        assert tokenize.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
        assert "manifest.json" in {a.path for a in client.list_artifacts(tokenize.info.run_id)}

        password = (home / "team" / "pg-password").read_text().strip()

        def sql(db: str, query: str) -> str:
            out = subprocess.run([str(pg_bin / "psql"), "-h", "127.0.0.1", "-p", str(ports["LMFORGE_PG_PORT"]),
                                  "-U", "lmforge", "-d", db, "-tAc", query], capture_output=True, text=True,
                                 env={**os.environ, "PGPASSWORD": password}, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        assert sql("mlflow", f"select status from runs where run_uuid = '{summary['pipeline_run_id']}'") == "FINISHED"
        assert sql("prefect", f"select state_type from flow_run where id = '{summary['prefect_flow_run_id']}'") \
            == "COMPLETED"
    finally:
        subprocess.run(["bash", "infra/team/stop.sh"], cwd=REPO, env=env, capture_output=True, timeout=180)
        shutil.rmtree(home, ignore_errors=True)
