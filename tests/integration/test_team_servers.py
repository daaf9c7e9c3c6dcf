"""infra/team: PostgreSQL from Debian's `postgresql`, SeaweedFS, an MLflow tracking server and a
Prefect server on PostgreSQL, all on 127.0.0.1; lmforge pointed at them by the variables start.sh
prints runs the tiny pipeline through pretrain unchanged: the runs land in PostgreSQL, the artifacts
in SeaweedFS's bucket, and the stages' work files, pretrain's staged inputs and its Ray Train
checkpoints went through it too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DATA_DIR, REPO, TINY, free_port, kill_ray_node, last_json, need_debian_package, run_cli

pytestmark = pytest.mark.integration


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    need_debian_package("postgresql", bool(found))
    return found[-1].parent


@pytest.fixture(scope="module")
def team():
    """infra/team/start.sh on free ports in a fresh home; what it printed, and the single-node run's results
    (kept by the first test for the cluster test to compare with)."""
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
        yield {"home": home, "env": env, "ports": ports, "pg_bin": pg_bin, "exports": exports, "s3": s3, "runs": {}}
    finally:
        subprocess.run(["bash", "infra/team/stop.sh"], cwd=REPO, env=env, capture_output=True, timeout=180)
        shutil.rmtree(home, ignore_errors=True)


def test_tiny_pipeline_on_postgres_backed_mlflow_and_prefect(team):
    home, env, ports, pg_bin, exports, s3 = (team[k] for k in ("home", "env", "ports", "pg_bin", "exports", "s3"))
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
    team["runs"]["single"] = summary
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


RAY = str(Path(sys.executable).parent / "ray")
PROBE = """
import json, os, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR")
@ray.remote(num_cpus=1)
def sees(path):
    return ray.get_runtime_context().get_node_id(), os.path.exists(path)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
print(json.dumps(ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                          .remote(sys.argv[2]) for node in nodes])))
"""
STATE = """
import json, sys
from ray.util.state import list_nodes, list_tasks
nodes = list_nodes(address=sys.argv[1])
tasks = list_tasks(address=sys.argv[1], limit=10_000, raise_on_missing_output=False)
print(json.dumps({"head": [n.node_id for n in nodes if n.is_head_node], "nodes": [n.node_id for n in nodes],
                  "tasks": [[t.name, t.state, t.node_id, t.attempt_number] for t in tasks]}))
"""


def _ray_ports() -> list[str]:
    """Every port of a Ray node of our own, so that three nodes (and any other Ray) share one machine."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}", "--disable-usage-stats"]


def _no_shared_disk_cluster(env: dict[str, str], logs: Path, procs: list[subprocess.Popen],
                            head_temp: str) -> tuple[str, str]:
    """A Ray head with no CPUs (the driver's node) and two 1-CPU worker nodes, each in its own mount namespace
    with a private, empty tmpfs over /tmp: they see the code and the installed corpus (the checkout is bound
    back in when it lives under /tmp, as a CI clone may), not the driver's LMFORGE_HOME (under /tmp) nor
    anything else it wrote there. Started processes go into ``procs`` at once, so a failed start is cleaned
    up too."""
    port, dashboard = free_port(), free_port()
    procs.append(subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
                               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                               f"--ray-client-server-port={free_port()}", f"--temp-dir={head_temp}", *_ray_ports()],
                              stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True))
    time.sleep(5)
    # root gets a private mount namespace directly; anyone else through a user namespace of their own
    unshare = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    hide = "mount -t tmpfs tmpfs /tmp"
    if REPO.resolve().is_relative_to("/tmp"):  # keep the checkout (code, .venv, corpus): bind its old inode back
        repo = shlex.quote(str(REPO.resolve()))
        hide = f"cd {repo} && {hide} && mkdir -p {repo} && mount --no-canonicalize --bind . {repo}"
    for i in range(2):
        worker = " ".join([RAY, "start", "--block", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                           "--temp-dir=/tmp/ray", *_ray_ports()])
        procs.append(subprocess.Popen([*unshare, "bash", "-c", f"{hide} && exec {worker}"],
                                      stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        status = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, env=env)
        if status.stdout.count("node_") >= 3 and "2.0 CPU" in status.stdout:
            return address, f"http://127.0.0.1:{dashboard}"
        time.sleep(2)
    raise AssertionError(f"the cluster did not come up: {status.stdout}{status.stderr}"
                         f"{(logs / 'worker0.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(team, tmp_path_factory):
    """The 3-node cluster of ``_no_shared_disk_cluster`` for the tests below (the second kills one of its
    workers), with storage on the team's SeaweedFS: its address, dashboard, environment, worker node ids and the
    process that started each worker node."""
    env = {**team["env"], **team["exports"], **team["s3"], "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, env=env, check=True)
    procs: list[subprocess.Popen] = []
    head_temp = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # Unix socket paths must stay short
    try:
        address, dashboard = _no_shared_disk_cluster(env, tmp_path_factory.mktemp("ray-logs"), procs, head_temp)
        probe = subprocess.run([sys.executable, "-c", PROBE, address, str(team["home"])], capture_output=True,
                               text=True, env=env, timeout=300)
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(seen) == 2 and not any(exists for _, exists in seen)  # the workers do not see LMFORGE_HOME
        yield {"address": address, "dashboard": dashboard, "env": env, "workers": {node for node, _ in seen},
               "worker_procs": procs[1:], "runs": {}}
    finally:
        for proc in procs:  # the workers' /tmp is their own tmpfs; the head's temp dir is removed below
            kill_ray_node(proc)
        shutil.rmtree(head_temp, ignore_errors=True)


# the cluster runs' settings: pretrain as one 1-CPU Ray Train worker on each worker node
ON_TWO_NODES = ["--set", "pipeline.name=tinycluster", "--set", "pretrain.distributed.num_workers=2",
                "--set", "pretrain.distributed.cpus_per_worker=1",
                "--set", "pretrain.distributed.placement_strategy=STRICT_SPREAD"]


def _cluster_state(cluster: dict) -> dict:
    state = subprocess.run([sys.executable, "-c", STATE, cluster["dashboard"]], capture_output=True, text=True,
                           env=cluster["env"], timeout=300)
    assert state.returncode == 0, state.stderr[-3000:]
    return json.loads(state.stdout.strip().splitlines()[-1])


def test_tiny_pipeline_on_nodes_that_share_no_disk(team, cluster, tmp_path):
    """The same pipeline through pretrain on a 3-node cluster whose worker nodes cannot see the driver's files,
    with storage on SeaweedFS: every task and Ray Train worker runs on those nodes, and the result is the
    single-node run's (same outputs of the data stages, validation loss within 2 %)."""
    single = team["runs"].get("single")
    assert single, "the single-node run (the test before this one) did not finish"
    exports, env, address, workers = team["exports"], cluster["env"], cluster["address"], cluster["workers"]
    summary = last_json(run_cli(
        ["run", "--config", str(TINY), "--until", "pretrain", *ON_TWO_NODES, "--set", f"engines.ray.address={address}"],
        env=env).stdout)
    assert summary["cache_hits"] == []

    cluster["runs"]["pipeline"] = summary
    state = _cluster_state(cluster)
    head = set(state["head"])
    assert len(state["nodes"]) == 3 and workers == set(state["nodes"]) - head
    ran: dict[str, set] = {}
    for name, task_state, node, _ in state["tasks"]:
        if task_state == "FINISHED" and node:
            ran.setdefault(name, set()).add(node)
    for name in ("extract_batch", "task_exact", "task_verify", "quality_shard", "TokenizerActor.run_shard",
                 "RayTrainWorker.run_train_fn"):
        assert ran.get(name) and not ran[name] & head, (name, ran.get(name))
    assert ran["RayTrainWorker.run_train_fn"] == workers  # one Ray Train worker on each node

    client = MlflowClient(exports["MLFLOW_TRACKING_URI"])

    def manifest(run_id: str) -> dict:
        return json.loads(Path(client.download_artifacts(run_id, "manifest.json", str(tmp_path))).read_text())

    for name in ("ingest", "dedup", "quality", "tokenize"):
        ours, theirs = manifest(summary["stages"][name]), manifest(single["stages"][name])
        assert {k: v for k, v in ours["outputs"].items() if not k.endswith(".png")} == \
            {k: v for k, v in theirs["outputs"].items() if not k.endswith(".png")}, name
    ours, theirs = (manifest(run["stages"]["pretrain"])["metrics"]["final_val_loss"] for run in (summary, single))
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)


def test_alignment_on_nodes_that_share_no_disk(team, cluster, tmp_path):
    """The same cluster on to ppo: sft and reward train on Ray Train workers and ppo's actors run on the worker
    nodes (the head has no CPU), reading the driver's models and rows where the stage put them on SeaweedFS;
    checkpoints go there too and nothing is left behind."""
    assert cluster["runs"].get("pipeline"), "the pipeline run on this cluster (the test before this one) did not finish"
    summary = last_json(run_cli(
        ["run", "--config", str(TINY), "--until", "ppo", *ON_TWO_NODES, "--set",
         f"engines.ray.address={cluster['address']}", "--set", "sft.distributed.cpus_per_worker=1",
         "--set", "reward.distributed.cpus_per_worker=1"], env=cluster["env"]).stdout)
    assert set(summary["cache_hits"]) == {"ingest", "dedup", "quality", "tokenize", "pretrain"}
    assert {"align_data", "sft", "reward", "ppo"} <= set(summary["stages"])
    state = _cluster_state(cluster)
    head = set(state["head"])
    ran = {(name, node) for name, task_state, node, _ in state["tasks"] if task_state == "FINISHED" and node}
    for role in ("PolicyRole.generate", "CriticRole.values", "RewardRole.score"):
        nodes = {node for name, node in ran if name == role}
        assert nodes and not nodes & head, (role, nodes)
    client = MlflowClient(team["exports"]["MLFLOW_TRACKING_URI"])
    for name in ("sft", "reward", "ppo"):
        manifest = client.download_artifacts(summary["stages"][name], "manifest.json", str(tmp_path))
        assert json.loads(Path(manifest).read_text())["storage"] == "s3://lmforge", name
    assert "model" in {a.path for a in client.list_artifacts(summary["stages"]["ppo"])}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in team["s3"].items():
            mp.setenv(name, value)
        from stages.core import storage

        assert storage.list_tree("s3://lmforge/work") == [] and storage.list_tree("s3://lmforge/train") == []


def _kill_the_node_running(names: tuple[str, ...], node_procs: list[subprocess.Popen], stop: threading.Event,
                           killed: list[str]) -> None:
    """SIGKILL the whole worker node (its raylet, agents and workers) that first runs one of ``names``."""
    titles = {f"ray::{name}".encode() for name in names}
    starters = {proc.pid: proc for proc in node_procs}
    while not stop.is_set() and not killed:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0].strip()
                if title not in titles:
                    continue
                task = psutil.Process(int(entry.name))
                node = next(p for p in task.parents() if p.pid in starters)
            except (OSError, psutil.Error, StopIteration):
                continue
            for proc in [*node.children(recursive=True), node]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            killed.append(title.decode())
            return
        time.sleep(0.002)


def test_a_worker_node_killed_in_the_bucket_or_components_pass_changes_nothing(team, cluster, tmp_path):
    """dedup on the same cluster, on the ingest output of the run above, while one of the two worker nodes is
    killed whole as it runs a task of the bucket pass (or of the components pass): Ray retries the lost tasks on
    the other node and the outputs are the pipeline's dedup outputs, byte for byte."""
    pipeline = cluster["runs"].get("pipeline")
    assert pipeline, "the pipeline run on this cluster (the test before this one) did not finish"
    client = MlflowClient(team["exports"]["MLFLOW_TRACKING_URI"])
    kept = client.download_artifacts(pipeline["stages"]["ingest"], "kept", str(tmp_path))
    expected = json.loads(Path(client.download_artifacts(pipeline["stages"]["dedup"], "manifest.json",
                                                         str(tmp_path))).read_text())
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_the_node_running, daemon=True,
                               args=(("task_bucket_pairs", "task_labels"), cluster["worker_procs"], stop, killed))
    watcher.start()
    try:
        out = tmp_path / "dedup"
        run_cli(["stage", "dedup", "--config", str(TINY), "--input", kept, "--output", str(out),
                 "--ray-address", cluster["address"], "--storage", team["s3"]["LMFORGE_STORAGE"]],
                env=cluster["env"])
    finally:
        stop.set()
        watcher.join()
    assert killed, "no bucket or components task was caught running"
    ours = json.loads((out / "manifest.json").read_text())
    assert {k: v for k, v in ours["outputs"].items() if not k.endswith(".png")} == \
        {k: v for k, v in expected["outputs"].items() if not k.endswith(".png")}
    attempts = [(name, task_state, attempt) for name, task_state, _, attempt in _cluster_state(cluster)["tasks"]
                if f"ray::{name}" == killed[0]]
    assert any(task_state == "FAILED" for _, task_state, _ in attempts), attempts
    assert any(attempt >= 1 and task_state == "FINISHED" for _, task_state, attempt in attempts), attempts
