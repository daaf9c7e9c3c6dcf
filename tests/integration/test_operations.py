"""Operating pipeline runs on real Prefect, Ray and MLflow (the tiny config, cheap stages):
compare two runs, rerun one stage from a run, status, cancel a running pipeline and
resume it, and gc. The runs share one throw-away LMFORGE_HOME, in file order."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import DATA_DIR, LMFORGE, REPO, TINY, last_json, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ops(tmp_path_factory, prefect_server):
    """A home of its own with two pipeline runs through dedup that differ in dedup's threshold."""
    home = tmp_path_factory.mktemp("ops-home")
    env = {"LMFORGE_HOME": str(home), "LMFORGE_DATA_DIR": str(DATA_DIR), "MLFLOW_TRACKING_URI": "",
           "PREFECT_API_URL": ""}
    base = ["--config", str(TINY), "--set", f"engines.prefect.port={prefect_server['port']}"]
    a = last_json(run_cli(["run", *base, "--until", "dedup"], env=env).stdout)
    b = last_json(run_cli(["run", *base, "--until", "dedup", "--set", "dedup.threshold=0.85"], env=env).stdout)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return {"home": home, "env": env, "base": base, "a": a, "b": b, "client": client, "prefect": prefect_server}


def experiment(client) -> str:
    return client.get_experiment_by_name("tiny").experiment_id


def ray_descendants(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "ray" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def cli(ops, args: list[str], **kw) -> dict:
    return last_json(run_cli(args, env=ops["env"], **kw).stdout)


def test_runs_roll_up_their_stage_figures_and_compare(ops):
    a, b, client = ops["a"], ops["b"], ops["client"]
    assert b["cache_hits"] == ["ingest"] and b["stages"]["ingest"] == a["stages"]["ingest"]
    parent = client.get_run(a["pipeline_run_id"])
    assert parent.data.metrics["dedup.kept"] > 0 and "dedup.duration_s" in parent.data.metrics
    assert "pipeline_config.yaml" in {f.path for f in client.list_artifacts(a["pipeline_run_id"])}
    inputs = {d.dataset.name: d.dataset for d in client.get_run(a["stages"]["dedup"]).inputs.dataset_inputs}
    assert json.loads(inputs["docs"].source) == {"run_id": a["stages"]["ingest"]}  # dataset lineage in MLflow

    shown = run_cli(["compare", a["pipeline_run_id"], b["pipeline_run_id"]], env=ops["env"])
    result = last_json(shown.stdout)
    rows = {r["metric"]: r for r in result["metrics"]}
    kept = rows["dedup.kept"]["values"]
    assert kept[0] < kept[1]  # a looser threshold (0.85) merges fewer near duplicates
    assert rows["ingest.kept"]["values"][0] == rows["ingest.kept"]["values"][1]  # the same reused run
    assert rows["dedup.duration_s"]["better"] == "min" and rows["dedup.duration_s"]["best"]
    # b reused a's ingest: shown with the duration of the run that computed it, marked, and not "better"
    ingest = rows["ingest.duration_s"]
    assert ingest["reused"] == [False, True] and ingest["values"][0] == ingest["values"][1] > 1
    assert ingest["best"] is None
    table = " ".join(shown.stderr.split())
    assert f"{int(kept[0]):,}" in table and "e+0" not in table and "…" not in table
    assert "(reused)" in table and "dedup.kept" in table
    assert [d for d in result["differing_config"] if d["param"] == "dedup.threshold"][0]["values"] == ["0.6", "0.85"]


NOISE = ("_C_mxfp8", "_C_cutlass", "_pytree", "register_constant", "triton", "Setting accelerator",
         "Downloading artifacts", "FutureWarning", "DeprecationWarning")


def test_rerun_one_stage_reuses_upstream_and_links_the_old_run(ops):
    a, client = ops["a"], ops["client"]
    shown = run_cli(["rerun", "dedup", "--from", a["pipeline_run_id"], "--only"], env=ops["env"])
    rerun = last_json(shown.stdout)
    noise = [line for line in shown.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noise, noise  # third-party noise is silenced, in the driver and in the Ray workers
    assert list(rerun["stages"]) == ["ingest", "dedup"] and rerun["cache_hits"] == ["ingest"]
    assert rerun["stages"]["dedup"] != a["stages"]["dedup"]  # run again although its cache key matched
    assert rerun["rerun_of"] == a["pipeline_run_id"]
    tags = client.get_run(rerun["pipeline_run_id"]).data.tags
    assert tags["lmforge.rerun_of"] == a["pipeline_run_id"] and tags["lmforge.forced"] == "dedup"
    old = client.get_run(a["stages"]["dedup"]).data
    new = client.get_run(rerun["stages"]["dedup"]).data
    assert new.tags["lmforge.cache_key"] == old.tags["lmforge.cache_key"]
    assert new.metrics["count.kept"] == old.metrics["count.kept"]  # deterministic: the same result again

    bad = run_cli(["rerun", "pretrain", "--from", a["pipeline_run_id"]], env=ops["env"], check=False)
    assert bad.returncode == 2 and "not a stage of pipeline run" in bad.stderr
    bad = run_cli(["rerun", "dedup", "--from", a["stages"]["dedup"]], env=ops["env"], check=False)
    assert bad.returncode == 2 and "is not a pipeline run" in bad.stderr

    status = cli(ops, ["status", rerun["pipeline_run_id"]])["pipeline_runs"][0]
    assert status["state"] == "FINISHED" and status["rerun_of"] == a["pipeline_run_id"]
    assert [(s["stage"], s["state"]) for s in status["stages"]] == [("ingest", "cached"), ("dedup", "done")]


def test_cancel_a_running_pipeline_then_resume_it(ops):
    client = ops["client"]
    proc = subprocess.Popen([LMFORGE, "run", *ops["base"], "--until", "tokenize"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=open(ops["home"] / "cancelled-run.log", "w"),
                            env={**os.environ, **ops["env"]})
    try:
        running, ray_procs, deadline = None, [], time.time() + 300
        while not (running and ray_procs) and time.time() < deadline:  # ingest and dedup are cached
            time.sleep(0.5)
            running = next((r for r in client.search_runs([experiment(client)], "attributes.status = 'RUNNING'")
                            if r.data.tags.get("lmforge.stage") in ("quality", "tokenize")), None)
            ray_procs = ray_descendants(proc.pid)  # the run's own local Ray
        assert running is not None and ray_procs, "no stage started running on Ray"
        pipeline_id = running.data.tags["mlflow.parentRunId"]

        result = cli(ops, ["cancel", pipeline_id])
        stages = [(r.data.tags.get("lmforge.stage"), r.info.status) for r in client.search_runs(
            [experiment(client)], f"tags.`mlflow.parentRunId` = '{pipeline_id}'")]
        time.sleep(1)
        why = f"{result}; stage runs {stages}; exit {proc.poll()}\n{(ops['home'] / 'cancelled-run.log').read_text()[-4000:]}"
        assert result["cancelled"] and result["state"] == "CANCELLED" and result["prefect_state"] == "CANCELLED", why
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(3)
    assert not [p for p in ray_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # the stage the cancel reached (the one seen running, or the next if that one had just finished) ended KILLED
    children = client.search_runs([experiment(client)], f"tags.`mlflow.parentRunId` = '{pipeline_id}'")
    killed = [r for r in children if r.info.status == "KILLED"]
    assert len(killed) == 1 and not [r for r in children if r.info.status == "RUNNING"]
    stage = killed[0].data.tags["lmforge.stage"]
    assert stage in ("quality", "tokenize")
    states = {s["stage"]: s["state"] for s in cli(ops, ["status", pipeline_id])["pipeline_runs"][0]["stages"]}
    assert states[stage] == "cancelled" and states["ingest"] == "cached"
    assert not (ops["home"] / "work" / pipeline_id / stage).exists()  # nothing half-written kept

    resumed = cli(ops, ["resume", pipeline_id])
    assert list(resumed["stages"]) == ["ingest", "dedup", "quality", "tokenize"]
    assert stage not in resumed["cache_hits"] and {"ingest", "dedup"} <= set(resumed["cache_hits"])
    assert client.get_run(resumed["pipeline_run_id"]).info.status == "FINISHED"


def test_mlflow_compare_page_shows_both_pipeline_runs(ops, chromium, tmp_path):
    """The MLflow UI's compare view of two pipeline runs (headless Chromium): both run names and the
    config field that differs are on the page."""
    import urllib.parse

    from tests.conftest import browse, free_port

    a, b, client = ops["a"], ops["b"], ops["client"]
    port = free_port()
    ui = cli(ops, ["ui", *ops["base"], "--set", f"engines.mlflow.ui_port={port}"], timeout=300)
    try:
        names = [client.get_run(r["pipeline_run_id"]).info.run_name for r in (a, b)]
        runs = json.dumps([a["pipeline_run_id"], b["pipeline_run_id"]])
        url = (f"{ui['mlflow']}/#/compare-runs?runs={urllib.parse.quote(runs)}"
               f"&experiments={urllib.parse.quote(json.dumps([experiment(client)]))}")
        dom, errors = browse(chromium, url, tmp_path / "profile", screenshot="mlflow-compare.png", budget_ms=30000)
        assert all(name in dom for name in names), names
        assert "dedup.threshold" in dom and "0.85" in dom
        # the experiment link lmforge prints opens MLflow's classic runs view, not its GenAI overview
        from stages.core.tracking import ui_link

        link = ui_link(ui["mlflow"], experiment(client))
        dom, _ = browse(chromium, link, tmp_path / "profile-runs", screenshot="mlflow-runs.png", budget_ms=30000)
        assert all(name in dom for name in names) and "Detect Issues" not in dom
    finally:
        run_cli(["down"], env=ops["env"], check=False)


def _model_run(ops, pipeline: dict, folder: Path, promote: bool) -> tuple[str, str]:
    """A quantize-like stage run of ``pipeline`` that registers a real model folder as lmforge-tiny-lm
    (promoted to production through the gate's own function when asked); (run id, version)."""
    from stages.core.tracking import Tracker, register_artifact
    from stages.deploy import promotion

    tracker = Tracker("tiny", ops["client"].tracking_uri)
    run_id = tracker.start_run("quantize", {"lmforge.stage": "quantize", "lmforge.complete": "true"},
                               parent_run_id=pipeline["pipeline_run_id"])
    tracker.client.log_artifacts(run_id, str(folder), "int8")
    tracker.finish(run_id)
    name = promotion.registry_name("tiny")
    version = register_artifact(tracker, name, run_id, "int8", "latest-quantized")
    if promote:
        current = promotion.production_version(tracker.client, name)
        promotion.promote(tracker.client, name, version, str(current.version) if current else None)
    return run_id, version


def test_gc_frees_what_nothing_needs_and_never_a_served_model(ops, tmp_path):
    """Last in the file: gc deletes the runs the tests above read."""
    from tests.conftest import free_port, make_tiny_model

    a, b, client = ops["a"], ops["b"], ops["client"]
    cli(ops, ["run", *ops["base"], "--until", "ingest"])  # the newest pipeline run uses ingest alone
    model = make_tiny_model(tmp_path / "model")
    # production (v2) and its rollback target (v1) live in the two oldest pipeline runs; v3, refused by the
    # gate, is the newest version; newer pipeline runs (rerun, cancelled, resumed) came after all of them
    v1_run, _ = _model_run(ops, a, model, promote=True)
    v2_run, v2 = _model_run(ops, b, model, promote=True)
    v3_run, _ = _model_run(ops, a, model, promote=False)
    assert str(client.get_model_version_by_alias("lmforge-tiny-lm", "production").version) == v2
    for keep in ("0", "-1"):
        bad = run_cli(["gc", "--keep", keep], env=ops["env"], check=False)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--keep" in bad.stderr

    dry = cli(ops, ["gc", "--keep", "1", "--dry-run"])
    assert dry["would_free_bytes"] > 0 and dry["freed_bytes"] == 0
    old_dedup = a["stages"]["dedup"]
    old_path = Path(client.get_run(old_dedup).info.artifact_uri.removeprefix("file://"))
    assert old_path.exists()
    done = cli(ops, ["gc", "--keep", "1"])
    assert done["items"] == dry["items"]  # the dry run lists exactly what the real run removes
    assert done["freed_bytes"] == dry["would_free_bytes"] and old_dedup in done["removed_runs"]
    assert not old_path.exists() and client.get_run(old_dedup).info.lifecycle_stage == "deleted"
    for kept in (v1_run, v2_run, v3_run):  # production, its rollback target, the newest version
        assert kept not in done["removed_runs"]
        assert Path(client.get_run(kept).info.artifact_uri.removeprefix("file://"), "int8", "config.json").exists()
    latest = client.search_runs([experiment(client)], filter_string="tags.`lmforge.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    for run_id in [p.split("=")[1] for p in latest.data.tags["lmforge.stage_runs"].split(",")]:
        assert run_id not in done["removed_runs"]  # the most recent pipeline run keeps everything it used
    # run b's dedup was used by b alone, so it went: asking for it again recomputes it (no dangling cache hit)
    assert ops["b"]["stages"]["dedup"] in done["removed_runs"]

    port = free_port()
    server = subprocess.Popen([LMFORGE, "serve", "--model", "models:/lmforge-tiny-lm@production", "--port", str(port),
                                ], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=open(tmp_path / "serve.log", "w"), env={**os.environ, **ops["env"]})
    try:
        started = {}
        for line in server.stdout:  # the JSON line comes once the app answers /health
            if line.startswith("{"):
                started = json.loads(line)
                break
        assert started, (tmp_path / "serve.log").read_text()[-3000:]
        assert started["version"] == v2
        import httpx

        answer = httpx.post(f"{started['url']}/chat/completions", timeout=120, json={
            "model": "lmforge-tiny-lm", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.terminate()
        server.wait(timeout=120)
    rolled = cli(ops, ["rollback", "--config", str(TINY)])
    assert rolled == {"model": "lmforge-tiny-lm", "from": v2, "to": "1"}
    generated = run_cli(["generate", "--model", "models:/lmforge-tiny-lm@production", "--prompt", "Hi",
                         "--max-tokens", "3"], env=ops["env"])
    assert json.loads(generated.stderr.strip().splitlines()[-1])["version"] == "1"

    again = cli(ops, ["run", *ops["base"], "--until", "dedup", "--set", "dedup.threshold=0.85"])
    assert again["cache_hits"] == ["ingest"] and again["stages"]["dedup"] != ops["b"]["stages"]["dedup"]
    # rollback moved production off v2, which is neither aliased, a rollback target nor the newest version: of all
    # the stage runs left, its run is the one gc frees now (the rest are `again`'s, the newest run's, or protected)
    assert cli(ops, ["gc", "--keep", "1", "--dry-run"])["removed_runs"] == [v2_run]
