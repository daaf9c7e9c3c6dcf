"""infra/team: PostgreSQL from Debian's `postgresql`, SeaweedFS, an MLflow tracking server and a
Prefect server on PostgreSQL, all on 127.0.0.1; lmforge pointed at them by the variables start.sh
prints runs the tiny pipeline through pretrain unchanged: the runs land in PostgreSQL, the artifacts
in SeaweedFS's bucket, and the stages' work files, pretrain's staged inputs and its Ray Train
checkpoints went through it too."""

from __future__ import annotations

import json
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
    ports = {"LMFORGE_PG_PORT": free_port(), "LMFORGE_MLFLOW_PORT": free_port(), "LMFORGE_PREFECT_PORT": free_port(),
             "LMFORGE_S3_PORT": free_port()}
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
        s3 = {k: exports.pop(k) for k in list(exports) if k.startswith("AWS_") or k == "LMFORGE_STORAGE"}
        assert exports == {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['LMFORGE_MLFLOW_PORT']}",
                           "PREFECT_API_URL": f"http://127.0.0.1:{ports['LMFORGE_PREFECT_PORT']}/api"}
        assert s3["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['LMFORGE_S3_PORT']}"
        assert s3["LMFORGE_STORAGE"] == "s3://lmforge" and s3["AWS_SECRET_ACCESS_KEY"]
        # the object store is not open: without the credentials nothing is listed
        anonymous = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    f"{s3['AWS_ENDPOINT_URL']}/lmforge?list-type=2"], capture_output=True, text=True)
        assert anonymous.stdout.startswith("4"), anonymous.stdout

        summary = last_json(run_cli(["run", "--config", str(TINY), "--until", "pretrain"],
                                    env={**{k: env[k] for k in ("LMFORGE_HOME", "LMFORGE_DATA_DIR")}, **exports,
                                         **s3}).stdout)
        assert list(summary["stages"]) == ["ingest", "dedup", "quality", "tokenize", "pretrain"]
        client = MlflowClient(exports["MLFLOW_TRACKING_URI"])
        tokenize = client.get_run(summary["stages"]["tokenize"])
        assert tokenize.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
        assert "manifest.json" in {a.path for a in client.list_artifacts(tokenize.info.run_id)}
        # the artifacts are objects in SeaweedFS's bucket; the stages' work files were there and are gone
        with pytest.MonkeyPatch.context() as mp:
            for name, value in s3.items():
                mp.setenv(name, value)
            from stages.core import storage

            stored = storage.list_tree("s3://lmforge/mlartifacts")
            assert any(f.endswith(f"{tokenize.info.run_id}/artifacts/manifest.json") for f in stored), stored[:20]
            assert storage.list_tree("s3://lmforge/work") == [] and storage.list_tree("s3://lmforge/train") == []
        for name in ("ingest", "dedup", "quality", "tokenize", "pretrain"):
            manifest = client.download_artifacts(summary["stages"][name], "manifest.json", str(home))
            assert json.loads(Path(manifest).read_text())["storage"] == "s3://lmforge"

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
