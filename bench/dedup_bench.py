"""Near-dedup quality and speed: lmforge's dedup against plain datasketch, on the same
benchmark (bench/dedup_cases.py) in the same process.

Quality: precision, recall and F1 per edit type, merge rate per hard-negative kind, for
a grid of shingle/threshold settings (the defaults were chosen from it) and for the
plain-datasketch baseline (word 5-grams of the raw text, MinHashLSH threshold 0.8, no
boilerplate step, no verification).
Speed: signature + LSH docs/s on the same documents: datasketch's per-document
``update_batch`` loop, ``MinHash.bulk``, lmforge's vectorized path in one process, and
the same through Ray tasks on all cores.

Usage: .venv/bin/python bench/dedup_bench.py [--per-kind 200] [--grid] [--speed-docs 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dedup_cases import EDIT_TYPES, NEGATIVE_KINDS, Benchmark, build
from stages.dedup.cluster import clusters
from stages.dedup.config import DedupConfig
from stages.dedup.core import dedup_documents


def evaluate(bench: Benchmark, cluster_of: np.ndarray) -> dict:
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cluster_of):
        members.setdefault(int(c), []).append(i)
    merged_pairs = {tuple(sorted(p)) for group in members.values() if len(group) > 1 for p in combinations(group, 2)}
    truth = {tuple(sorted(p)) for pairs in bench.positives.values() for p in pairs}
    out: dict[str, dict] = {}
    for edit, pairs in bench.positives.items():
        group = {i for p in pairs for i in p}
        hits = sum(tuple(sorted(p)) in merged_pairs for p in pairs)
        involved = [p for p in merged_pairs if p[0] in group or p[1] in group]
        true_merged = sum(p in truth for p in involved)
        recall = hits / len(pairs)
        precision = true_merged / len(involved) if involved else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[edit] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
    for kind, pairs in bench.negatives.items():
        out[kind] = {"merged_rate": round(sum(tuple(sorted(p)) in merged_pairs for p in pairs) / len(pairs), 4)}
    return out


def run_lmforge(bench: Benchmark, cfg: DedupConfig) -> np.ndarray:
    return dedup_documents(bench.docs, cfg).cluster


def run_datasketch_baseline(bench: Benchmark, threshold: float = 0.8, n: int = 5, num_perm: int = 128) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = []
    for i, doc in enumerate(bench.docs):
        words = doc["text"].split()
        shingles = {" ".join(words[j:j + n]).encode() for j in range(max(1, len(words) - n + 1))}
        m = MinHash(num_perm=num_perm)
        m.update_batch(shingles)
        lsh.insert(str(i), m)
        hashes.append(m)
    pairs = [(i, int(j)) for i, m in enumerate(hashes) for j in lsh.query(m) if int(j) > i]
    return clusters(len(bench.docs), np.array(pairs, dtype=np.int64).reshape(-1, 2))


def summarize(result: dict) -> dict:
    recalls = [result[e]["recall"] for e in EDIT_TYPES]
    return {"min_recall": min(recalls), "mean_f1": round(float(np.mean([result[e]["f1"] for e in EDIT_TYPES])), 4),
            "max_negative_merge": max(result[k]["merged_rate"] for k in NEGATIVE_KINDS)}


def quality(bench: Benchmark, grid: bool) -> dict:
    results = {"datasketch_baseline(word5,t=0.8)": evaluate(bench, run_datasketch_baseline(bench))}
    settings = [DedupConfig()]
    if grid:
        settings += [DedupConfig(shingle_size=n, threshold=t) for n in (2, 3, 5) for t in (0.5, 0.6, 0.7, 0.8)
                     if (n, t) != (3, 0.6)]
        settings += [DedupConfig(shingle_unit="char", shingle_size=5, threshold=0.7),
                     DedupConfig(boilerplate=False), DedupConfig(verify=False)]
    for cfg in settings:
        label = (f"lmforge({cfg.shingle_unit}{cfg.shingle_size},t={cfg.threshold}"
                 f"{',no-boilerplate' if not cfg.boilerplate else ''}{',no-verify' if not cfg.verify else ''})")
        if cfg == DedupConfig():
            label += " [default]"
        results[label] = evaluate(bench, run_lmforge(bench, cfg))
    return results


def _sign_and_band(norm_docs: list[str], cfg: DedupConfig) -> np.ndarray:
    """lmforge's path from normalized text to LSH band keys (what a Ray task runs)."""
    from stages.dedup.minhash import ShingleHasher, band_keys, signatures

    hasher = ShingleHasher(cfg.shingle_unit, cfg.shingle_size)
    sig = signatures([hasher.hashes(t) for t in norm_docs], cfg.num_perm, cfg.minhash_seed)
    return band_keys(sig, *cfg.lsh())


def speed(docs: list[str], repeats: int = 3) -> dict:
    """Signature + LSH docs/s. Every path starts from the same normalized text and ends
    with LSH buckets; the datasketch paths build their shingle strings inside the timing."""
    from datasketch import MinHash, MinHashLSH

    from stages.core.ray_runtime import ensure_ray
    from stages.dedup.cluster import candidate_pairs
    from stages.dedup.normalize import normalize

    cfg = DedupConfig(boilerplate=False)
    bands, rows = cfg.lsh()
    norm = [normalize(t) for t in docs]

    def shingle_bytes(text: str) -> list[bytes]:
        words = text.split()
        n = min(cfg.shingle_size, len(words))
        return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]

    def datasketch_loop():
        lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
        for i, text in enumerate(norm):
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed)
            m.update_batch(shingle_bytes(text))
            lsh.insert(i, m)

    def datasketch_bulk():
        lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
        for i, m in enumerate(MinHash.bulk((shingle_bytes(t) for t in norm), num_perm=cfg.num_perm,
                                           seed=cfg.minhash_seed)):
            lsh.insert(i, m)

    def lmforge_one_process():
        candidate_pairs(_sign_and_band(norm, cfg), np.arange(len(norm)))

    import ray

    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    remote = ray.remote(_sign_and_band).options(num_cpus=1)
    chunks = np.array_split(np.arange(len(norm)), cpus * 2)
    refs = [ray.put([norm[i] for i in chunk]) for chunk in chunks]

    def lmforge_ray():
        keys = np.concatenate(ray.get([remote.remote(ref, cfg) for ref in refs]))
        candidate_pairs(keys, np.arange(len(norm)))

    timings = {name: [] for name in ("datasketch_update_batch_loop", "datasketch_bulk", "lmforge_one_process",
                                     "lmforge_ray_all_cores")}
    lmforge_ray()  # warm the workers
    for _ in range(repeats):  # alternate, so a busy neighbour hurts every candidate alike
        for name, fn in (("datasketch_update_batch_loop", datasketch_loop), ("datasketch_bulk", datasketch_bulk),
                         ("lmforge_one_process", lmforge_one_process), ("lmforge_ray_all_cores", lmforge_ray)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in timings.items()}
    out = {name: {"docs_per_s": round(len(docs) / t, 1)} for name, t in best.items()}
    out["ratio_one_process_vs_bulk"] = round(best["datasketch_bulk"] / best["lmforge_one_process"], 2)
    out["ratio_ray_per_core_vs_bulk"] = round(best["datasketch_bulk"] / best["lmforge_ray_all_cores"] / cpus, 2)
    out["ratio_one_process_vs_update_batch_loop"] = round(
        best["datasketch_update_batch_loop"] / best["lmforge_one_process"], 2)
    out["docs"] = len(docs)
    out["ray_cpus"] = cpus
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=200)
    parser.add_argument("--grid", action="store_true", help="also run the settings grid the defaults came from")
    parser.add_argument("--speed-docs", type=int, default=20000)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    started = time.time()
    bench = build(per_kind=args.per_kind)
    print(f"benchmark: {len(bench.docs)} documents built in {time.time() - started:.0f} s", file=sys.stderr)
    results: dict = {"documents": len(bench.docs), "quality": quality(bench, args.grid)}
    results["summary"] = {k: summarize(v) for k, v in results["quality"].items()}
    if not args.skip_speed:
        from bench.dedup_cases import real_passages

        results["speed"] = speed([t for _, t in real_passages(seed=7)[: args.speed_docs]])
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
