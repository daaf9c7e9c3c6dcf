"""dedup at growing corpus sizes: wall time, documents/s per core, the driver's peak RSS apart from
the Ray workers', the largest worker's, the work store's peak size, and recall / precision of the
planted near-duplicate clusters (bench/planted_corpus.py), so the claim "the driver's memory does
not grow with the corpus" is a measured one.

    .venv/bin/lmforge stage ingest --config pipelines/configs/demo.yaml --output /tmp/demo-ingest
    .venv/bin/lmforge stage dedup --config pipelines/configs/demo.yaml --input /tmp/demo-ingest/kept --output /tmp/demo-dedup
    .venv/bin/python bench/dedup_scale_bench.py --base /tmp/demo-dedup/kept.jsonl --docs 250000 1000000

``--baseline-tree DIR`` also runs the dedup of another checkout (e.g. ``git worktree add /tmp/old
<commit>``) on the same corpora, beside this one. ``--memory-limit-mb N`` runs each dedup (driver,
Ray and its workers) in a cgroup (v1 memory controller; needs root) that holds N MB, to show a
corpus larger than the memory the stage is given. ``--corpus-dir DIR`` keeps the generated corpora
there (``corpus-N.jsonl``, from ``bench/planted_corpus.py --out``) and reuses them. ``--set
dedup.FIELD=VALUE`` overrides the demo config's dedup section in every run (e.g. ``dedup.shard_docs``).
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

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.planted_corpus import planted_truth, write as write_corpus


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _tree_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


CGROUP = Path("/sys/fs/cgroup/memory")


def limited(cmd: list[str], limit_mb: int | None) -> tuple[list[str], Path | None]:
    """``cmd`` started inside a fresh memory cgroup of ``limit_mb`` (and that cgroup), or as it is."""
    if not limit_mb:
        return cmd, None
    group = CGROUP / f"lmforge-bench-{os.getpid()}"
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *cmd], group


def run(tree: Path, corpus: Path, out: Path, truth: dict[str, str], limit_mb: int | None = None,
        overrides: list[str] = ()) -> dict:
    cmd, group = limited([sys.executable, "-m", "stages", "dedup", "--input", str(corpus), "--output", str(out),
                          "--config", str(ROOT / "pipelines/configs/demo.yaml"),
                          *(a for o in overrides for a in ("--set", o))], limit_mb)
    env = {**os.environ, "PYTHONPATH": str(tree), "LMFORGE_HOME": str(out.parent / "home")}
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    driver = psutil.Process(proc.pid)
    driver_peak, worker_peak, store_peak, ticks = 0, 0, 0, 0
    while proc.poll() is None:
        driver_peak = max(driver_peak, _rss(driver))
        try:
            children = driver.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                    worker_peak = max(worker_peak, _rss(child))
            except psutil.Error:
                pass
        if ticks % 10 == 0:
            store_peak = max(store_peak, _tree_bytes(out))
        ticks += 1
        time.sleep(0.2)
    wall = time.time() - started
    group_peak = int((group / "memory.max_usage_in_bytes").read_text()) if group else 0
    if group:
        group.rmdir()
    if proc.returncode:
        raise SystemExit(f"dedup in {tree} failed: {proc.stdout.read()[-2000:]}")
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    return {"wall_s": round(wall, 1), "docs_per_s_per_core": round(metrics["docs_in"] / wall / os.cpu_count(), 1),
            "driver_peak_rss_mb": round(driver_peak / 2**20), "worker_peak_rss_mb": round(worker_peak / 2**20),
            "work_store_peak_mb": round(store_peak / 2**20), "input_mb": round(corpus.stat().st_size / 2**20),
            **({"memory_limit_mb": limit_mb, "cgroup_peak_mb": round(group_peak / 2**20)} if group else {}),
            **score(out, truth),
            "step_seconds": {k[5:]: v for k, v in metrics.items() if k.startswith("time.")}}


def score(out: Path, truth: dict[str, str]) -> dict:
    """Recall: planted copies removed as duplicates. Precision: removed duplicates that are planted
    copies (the others are pairs of the base corpus with a verified Jaccard above the threshold that
    the base corpus's own dedup missed)."""
    found = removed = 0
    with open(out / "removed.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["reason"] in ("exact", "near"):
                removed += 1
                found += record["id"] in truth
    return {"recall": round(found / max(1, len(truth)), 4), "precision": round(found / max(1, removed), 4),
            "planted_copies": len(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a deduplicated corpus: dedup's kept.jsonl")
    parser.add_argument("--docs", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--baseline-tree", type=Path, help="another checkout whose dedup runs beside this one")
    parser.add_argument("--memory-limit-mb", type=int, help="run each dedup in a memory cgroup of this size (root)")
    parser.add_argument("--corpus-dir", type=Path, help="keep (and reuse) the generated corpora here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="dedup.FIELD=VALUE",
                        help="a config override for every dedup run (repeatable), e.g. dedup.shard_docs=16000")
    args = parser.parse_args()
    trees = {"this": ROOT, **({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for docs in args.docs:
            corpus = (args.corpus_dir or Path(tmp)) / f"corpus-{docs}.jsonl"
            truth = planted_truth(corpus) if corpus.exists() else write_corpus(args.base, docs, corpus)
            for name, tree in trees.items():
                out = Path(tmp) / f"{name}-{docs}" / "out"
                out.parent.mkdir()
                results[f"{name} {docs}"] = row = {"docs": docs, **run(tree, corpus, out, truth, args.memory_limit_mb,
                                                                     args.overrides)}
                print(json.dumps({name: row}), flush=True)
                subprocess.run(["rm", "-rf", str(out.parent)])
            if not args.corpus_dir:
                corpus.unlink()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
