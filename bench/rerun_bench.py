"""What a one-stage rerun costs beyond the stage's own compute: `lmforge rerun STAGE --only
--from RUN` end to end (process start, Prefect flow, MLflow lookups of every upstream
stage by cache key, the stage, logging) against the stage's own duration as the rerun
recorded it. The difference is the overhead a person waits for on top of the work.

    .venv/bin/python bench/rerun_bench.py --stage ppo                  # the newest pipeline run
    .venv/bin/python bench/rerun_bench.py --stage ppo --from RUN_ID --repeats 2

Uses the MLflow store of $MLFLOW_TRACKING_URI / $LMFORGE_HOME, like the CLI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="ppo")
    parser.add_argument("--from", dest="from_run", default=None, help="pipeline run id (default: the newest)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from pipelines import runs
    from stages.core.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri())
    from_run = args.from_run or runs.recent_pipeline_runs(client, 1)[0].info.run_id
    lmforge = str(Path(sys.executable).parent / "lmforge")
    rows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        proc = subprocess.run([lmforge, "rerun", args.stage, "--only", "--from", from_run], capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"rerun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        stage_s = client.get_run(summary["stages"][args.stage]).data.metrics["duration_s"]
        rows.append({"wall_s": round(wall, 2), "stage_s": round(stage_s, 2), "overhead_s": round(wall - stage_s, 2),
                     "reused": summary["cache_hits"]})
    print(json.dumps({"stage": args.stage, "from": from_run, "runs": rows,
                      "max_overhead_s": max(r["overhead_s"] for r in rows)}, indent=1))


if __name__ == "__main__":
    main()
