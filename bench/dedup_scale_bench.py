"""dedup stage wall time and peak RSS at 1x and 4x the demo corpus.

Input: the ingest output of the demo config (run `lmforge stage ingest --config
pipelines/configs/demo.yaml --output DIR` first, or pass --ingest-dir). 4x is the corpus
plus three rewritten copies (each line's words reversed / rotated / pairwise swapped),
so the copies are new documents, not duplicates, and the work scales like a 4x corpus.
Peak RSS is the whole process tree (CLI driver + Ray workers), sampled every 0.2 s.

Usage: .venv/bin/python bench/dedup_scale_bench.py --ingest-dir DIR [--scales 1 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.platform_bench import tree_rss
from stages.core.docio import read_documents

REWRITES = [
    lambda line: line,
    lambda line: " ".join(reversed(line.split(" "))),
    lambda line: " ".join((w := line.split(" "))[1:] + w[:1]),
    lambda line: " ".join(b for pair in zip(line.split(" ")[1::2], line.split(" ")[0::2]) for b in pair),
]


def write_scaled(ingest_dir: Path, scale: int, dest: Path) -> int:
    count = 0
    with open(dest, "w", encoding="utf-8") as out:
        for k in range(scale):
            for doc in read_documents(ingest_dir):
                if not isinstance(doc, dict):
                    continue
                text = "\n".join(REWRITES[k](line) for line in doc["text"].split("\n"))
                out.write(json.dumps({**doc, "id": f"{doc['id']}~{k}", "text": text}, ensure_ascii=False) + "\n")
                count += 1
    return count


def run(input_path: Path, out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "lmforge"), "stage", "dedup", "--input", str(input_path),
           "--output", str(out), "--config", "pipelines/configs/demo.yaml"]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"dedup failed: {proc.stdout.read()}")
    manifest = json.loads((out / "manifest.json").read_text())
    m = manifest["metrics"]
    return {"docs": int(m["docs_in"]), "input_mb": round(input_path.stat().st_size / 1e6, 1),
            "wall_s": round(time.time() - started, 1), "peak_tree_rss_mb": round(peak / 2**20),
            "signature_docs_per_s": round(m.get("signature_docs_per_s", 0)), "kept": int(m["kept"]),
            "exact_removed": int(m["exact_removed"]), "near_removed": int(m["near_removed"]),
            "boilerplate_mb": round(m["boilerplate_chars"] / 1e6, 1),
            "step_seconds": {k[5:]: v for k, v in m.items() if k.startswith("time.")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-dir", type=Path, required=True, help="ingest output: its kept/ folder or kept.jsonl")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            path = Path(tmp) / f"x{scale}.jsonl"
            write_scaled(args.ingest_dir, scale, path)
            results[f"{scale}x"] = run(path, Path(tmp) / f"out{scale}")
            path.unlink()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
