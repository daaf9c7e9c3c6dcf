"""Platform figures for issue 2: ingest on the demo config, and what Prefect + MLflow cost a stage.

1. `lmforge run --config pipelines/configs/demo.yaml --until ingest` in a fresh
   LMFORGE_HOME (nothing cached) as a subprocess: wall time, peak RSS of the whole
   process tree (CLI + Ray workers; the Prefect server is started beforehand and
   measured separately), extraction MB/s from the stage's own metrics.
2. Overhead per stage: ingest on one small file, called directly (`execute_stage`,
   no tracking) vs run through the Prefect flow with MLflow tracking, alternating in
   one process, N times each; the difference of medians is the orchestration cost.

Usage: .venv/bin/python bench/platform_bench.py [--repeats 5] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def demo_run(port: int, until: str = "ingest") -> dict:
    home = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    env = {**os.environ, "LMFORGE_HOME": str(home),
           "LMFORGE_DATA_DIR": os.environ.get("LMFORGE_DATA_DIR", str(REPO / ".lmforge" / "data"))}
    cmd = [str(Path(sys.executable).parent / "lmforge"), "run", "--config", "pipelines/configs/demo.yaml",
           "--until", until, "--set", f"engines.prefect.port={port}"]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    wall = time.time() - started
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"demo ingest failed ({proc.returncode}): {out}")
    summary = json.loads(out.strip().splitlines()[-1])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    metrics = client.get_run(summary["stages"]["ingest"]).data.metrics
    funnel = {}
    for stage, run_id in summary["stages"].items():
        m = client.get_run(run_id).data.metrics
        funnel[stage] = {"docs_out": int(m.get("count.kept", 0)), "duration_s": round(m.get("duration_s", 0), 1),
                         "mb_out": round((m.get("text_mb") or m.get("chars_kept", 0) / 1e6), 1)}
    return {
        "until": until,
        "funnel": funnel,
        "wall_s": round(wall, 1),
        "peak_tree_rss_mb": round(peak / 2**20),
        "docs": int(metrics["count.kept"]),
        "input_mb": round(metrics["input_mb"], 1),
        "text_mb": round(metrics["text_mb"], 1),
        "extract_mb_per_s": round(metrics["extract_mb_per_s"], 2),
        "stage_duration_s": round(metrics["duration_s"], 1),
    }


def overhead(repeats: int, api_url: str) -> dict:
    os.environ["LMFORGE_HOME"] = tempfile.mkdtemp(prefix="lmforge-bench-overhead-")
    from pipelines.engines import prefect_env

    os.environ.update(prefect_env())
    os.environ["PREFECT_API_URL"] = api_url
    from pipelines.config import load_config
    from pipelines.flow import pipeline_flow
    from stages.core.runner import execute_stage
    from stages.core.ray_runtime import ensure_ray
    from stages.registry import get_stage

    corpus = Path(os.environ["LMFORGE_HOME"]) / "one-file"
    corpus.mkdir()
    (corpus / "doc.txt").write_text("A single small document, so the stage itself costs almost nothing.\n")
    ensure_ray()
    direct, flowed = [], []
    for i in range(repeats):
        overrides = ["ingest.sources=[]", f"ingest.paths=[{corpus}]", f"pipeline.seed={1000 + i}"]
        cfg = load_config(REPO / "pipelines/configs/tiny.yaml", overrides)
        t = time.perf_counter()
        execute_stage(get_stage("ingest"), cfg.ingest, {}, Path(os.environ["LMFORGE_HOME"]) / f"direct-{i}",
                      seed=cfg.pipeline.seed)
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        state = pipeline_flow(config=cfg.model_dump(mode="json"), until="ingest", return_state=True)
        flowed.append(time.perf_counter() - t)
        assert state.is_completed(), state
    med_direct, med_flow = statistics.median(direct), statistics.median(flowed)
    return {
        "repeats": repeats,
        "direct_median_s": round(med_direct, 3),
        "flow_median_s": round(med_flow, 3),
        "overhead_per_stage_s": round(med_flow - med_direct, 3),
        "ratio_flow_vs_direct": round(med_flow / med_direct, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--until", default="ingest", help="last stage of the demo run (e.g. quality)")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()

    from pipelines.engines import ensure_prefect, stop_started
    from tests.conftest import free_port

    os.environ.setdefault("LMFORGE_HOME", tempfile.mkdtemp(prefix="lmforge-bench-prefect-"))
    port = free_port()
    t = time.time()
    server = ensure_prefect("127.0.0.1", port, None, 300)
    prefect_start_s = round(time.time() - t, 1)
    server_proc = psutil.Process(int((Path(os.environ["LMFORGE_HOME"]) / "run" / "prefect.pid").read_text()))
    results: dict = {"prefect_server": {"first_start_s": prefect_start_s}}
    sampler_peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            sampler_peak[0] = max(sampler_peak[0], tree_rss(server_proc))
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    home = os.environ["LMFORGE_HOME"]
    try:
        if not args.skip_demo:
            results["demo_run"] = demo_run(port, args.until)
        if not args.skip_overhead:
            results["overhead"] = overhead(args.repeats, server.url + "/api")
    finally:
        stop.set()
        thread.join()
        results["prefect_server"]["peak_rss_mb"] = round(sampler_peak[0] / 2**20)
        os.environ["LMFORGE_HOME"] = home
        stop_started()
        if "ray" in sys.modules:
            import ray

            ray.shutdown()
    from stages.core.environment import hardware

    results["hardware"] = hardware()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
