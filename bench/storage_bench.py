"""What object storage costs a stage: the same standalone stage run twice on one input, its work files
on local disk and then on S3 (a SeaweedFS this script starts on 127.0.0.1), with wall times, their
ratio, and whether the outputs are byte-identical.

    .venv/bin/python bench/storage_bench.py --stage dedup --input corpus.jsonl --config pipelines/configs/demo.yaml

SeaweedFS runs on the same 2 cores as the stage, so the ratio is an upper bound for a store on
other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import object_store  # noqa: E402

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def run(stage: str, inputs: list[str], config: str, out: Path, env: dict[str, str], storage: str | None) -> float:
    args = [LMFORGE, "stage", stage, "--output", str(out), "--config", config]
    for item in inputs:
        args += ["--input", item]
    if storage:
        args += ["--storage", storage]
    started = time.time()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed ({'S3' if storage else 'local'}):\n{proc.stderr[-3000:]}")
    return time.time() - started


def outputs(folder: Path) -> dict[str, str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {k: v for k, v in manifest["outputs"].items() if not k.endswith((".png", "train_log.jsonl"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--input", action="append", default=[], help="[NAME=]PATH, as `lmforge stage` takes it")
    parser.add_argument("--config", default="pipelines/configs/demo.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmforge-storage-bench-") as scratch:
        base = Path(scratch)
        store = object_store.start(base / "seaweedfs")
        try:
            env = {**os.environ, "LMFORGE_HOME": str(base / "home")}
            env.pop("LMFORGE_STORAGE", None)
            local = run(args.stage, args.input, args.config, base / "local", env, None)
            remote = run(args.stage, args.input, args.config, base / "s3", {**env, **store.env()}, store.uri("bench"))
            same = outputs(base / "local") == outputs(base / "s3")
        finally:
            store.stop()
    print(json.dumps({"stage": args.stage, "local_s": round(local, 1), "s3_s": round(remote, 1),
                      "s3_over_local": round(remote / local, 2), "outputs_identical": same}))


if __name__ == "__main__":
    main()
