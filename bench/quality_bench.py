"""Language-ID and quality-classifier throughput (docs/s, one process, one thread each),
on real documents: the kept output of a dedup run.

Usage: .venv/bin/python bench/quality_bench.py --docs DEDUP_OUT/kept.jsonl --classifier MODEL [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.docio import read_documents
from stages.quality import classifier as clf
from stages.quality.langid import detect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    texts = []
    for doc in read_documents(args.docs):
        if isinstance(doc, dict):
            texts.append(doc["text"])
        if len(texts) >= args.n:
            break
    detect(texts[:10])  # load the model outside the timing
    model = clf.load(args.classifier)
    results = {"docs": len(texts)}
    for name, fn in (("langid", lambda: detect(texts)),
                     ("quality_classifier", lambda: clf.scores(model, [clf.as_line(t, 3000) for t in texts]))):
        best = min(_time(fn) for _ in range(3))
        results[f"{name}_docs_per_s"] = round(len(texts) / best)
    print(json.dumps(results, indent=1))


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
