"""What the dedup stage does when it runs. ``stage.py`` beside this holds its declarations and says
what the stage is; this module is imported only when the stage runs."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.contract import StageContext, StageResult
from stages.core.document_shards import ShardedDocuments
from stages.core.docio import append_jsonl, write_parquet
from stages.core.shards import iter_shard, read_shard
from stages.dedup import core
from stages.dedup.config import DedupConfig
from stages.dedup.minhash import ShingleHasher, text_shingles
from stages.dedup.plots import write_plots

STRIPPED = "stripped-{:05d}.jsonl"


def task_exact(shard: str, index: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    docs = read_shard(Path(shard))
    keys, lengths = core.shard_exact([d["text"] for d in docs])
    return [d["id"] for d in docs], [str(d.get("source") or "") for d in docs], keys, lengths


def task_units(shard: str, index: int, active: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    return core.shard_unit_counts([d["text"] for d in iter_shard(Path(shard))], active, cfg)


def dedup_signatures(shard: str, index: int, active: np.ndarray, boilerplate: np.ndarray,
                     cfg: DedupConfig) -> dict[str, np.ndarray]:
    """Pass C for one shard: strip, sign, band; the stripped texts go to a work file."""
    texts = [d["text"] for d in iter_shard(Path(shard))]
    signed = core.shard_strip_and_sign(texts, active, boilerplate, cfg)
    with open(Path(shard).parent / STRIPPED.format(index), "w", encoding="utf-8") as handle:
        for text in signed.stripped:
            handle.write(json.dumps(text, ensure_ascii=False) + "\n")
    return {"chars": signed.boilerplate_chars, "lengths": signed.lengths, "keys": signed.band_keys,
            "rows": signed.band_rows,
            "empty": np.array([s is not None and not s.strip() for s in signed.stripped], dtype=bool)}


def task_shingles(shard: str, index: int, rows: np.ndarray, cfg: DedupConfig) -> list[np.ndarray]:
    hasher = ShingleHasher(cfg.shingle_unit, cfg.shingle_size)
    wanted = set(int(r) for r in rows)
    found: dict[int, np.ndarray] = {}
    with open(Path(shard).parent / STRIPPED.format(index), encoding="utf-8") as handle:
        for row, line in enumerate(handle):
            if row in wanted:
                found[row] = text_shingles(json.loads(line), hasher)
    return [found[int(r)] for r in rows]


def task_write(shard: str, index: int, status: np.ndarray, value: np.ndarray, dup_ids: dict[int, str],
               cluster_ids: list[str], cluster_sizes: np.ndarray, chars: np.ndarray, fmt: str) -> None:
    work = Path(shard).parent
    kept_records: list[dict[str, Any]] = []  # only for Parquet output
    with open(work / STRIPPED.format(index), encoding="utf-8") as stripped_file, \
            open(work / f"kept-{index:05d}.jsonl", "w", encoding="utf-8") as kept, \
            open(work / f"removed-{index:05d}.jsonl", "w", encoding="utf-8") as removed:
        for row, (doc, line) in enumerate(zip(iter_shard(Path(shard)), stripped_file)):
            if status[row] == core.KEPT:
                doc["text"] = json.loads(line)
                doc["boilerplate_chars"] = int(chars[row])
                doc["dup_cluster"] = cluster_ids[row]
                doc["dup_cluster_size"] = int(cluster_sizes[row])
                if fmt == "parquet":
                    kept_records.append(doc)
                else:
                    append_jsonl(kept, doc)
            else:
                reason = core.REASONS[int(status[row])]
                v = float(value[row])
                append_jsonl(removed, {
                    **doc,
                    "reason": reason,
                    "filter": f"dedup.{reason}",
                    "value": int(v) if reason == "boilerplate" else round(v, 4),
                    "duplicate_of": dup_ids.get(row),
                    "cluster_id": cluster_ids[row],
                })
    if kept_records:
        write_parquet(work / f"kept-{index:05d}.parquet", kept_records)


class DedupPasses:
    """What DedupStage does when it runs (the declarations live in stage.py, which imports this lazily)."""

    def run(self, ctx: StageContext[DedupConfig]) -> StageResult:
        import ray

        cfg = ctx.config
        out = ctx.output_dir
        timings: dict[str, float] = {}
        t0 = time.time()
        docs = ShardedDocuments.open(ctx, shard_docs=cfg.shard_docs, max_doc_chars=cfg.max_doc_chars,
                                     task_cpus=cfg.task_cpus, retry_exceptions=False)
        sharded = docs.sharded
        timings["shard_s"] = time.time() - t0
        shards = docs.shards
        offsets = sharded.offsets()
        n = docs.documents
        ctx.log.info("dedup: %d documents in %d shards (%d quarantined)", n, len(shards), sharded.quarantined)

        def run_pass(label: str, step, args_of=lambda i: (), indices=None) -> list[Any]:
            started = time.time()
            results = docs.map(label, step, args_of, indices)
            timings[f"{label}_s"] = time.time() - started
            return results

        # A: exact
        exact = run_pass("exact", task_exact)
        ids = [i for part in exact for i in part[0]]
        sources = [s for part in exact for s in part[1]]
        keys = np.concatenate([p[2] for p in exact]) if exact else np.empty(0, np.uint64)
        lengths = np.concatenate([p[3] for p in exact]) if exact else np.empty(0, np.int64)
        exact_rep = core.resolve_exact(keys, lengths, ids) if cfg.exact else np.arange(n)
        active = exact_rep == np.arange(n)

        def sl(array: np.ndarray, i: int) -> np.ndarray:
            return array[offsets[i]: offsets[i] + sharded.sizes[i]]

        # B: boilerplate units
        boiler = np.empty(0, np.uint64)
        if cfg.boilerplate:
            counts = run_pass("boilerplate", task_units, lambda i: (sl(active, i), cfg))
            from stages.dedup.boilerplate import merge_counts

            boiler = core.resolve_boilerplate(*merge_counts(counts), cfg)
        boiler_ref = ray.put(boiler)

        # C: strip + signatures + bands
        signed = run_pass("signatures", dedup_signatures, lambda i: (sl(active, i), boiler_ref, cfg))
        chars = np.concatenate([p["chars"] for p in signed]) if signed else np.empty(0, np.int64)
        stripped_len = np.concatenate([p["lengths"] for p in signed]) if signed else np.empty(0, np.int64)
        boiler_empty = np.concatenate([p["empty"] for p in signed]) if signed else np.empty(0, bool)
        band_rows = np.concatenate([p["rows"] + offsets[i] for i, p in enumerate(signed)]) if signed else np.empty(0, np.int64)
        nonempty = [p["keys"] for p in signed if p["keys"].size]
        band_keys = np.concatenate(nonempty) if nonempty else np.empty((0, 0), np.uint64)

        # V: candidates, verification, clusters
        started = time.time()
        pairs = core.near_pairs(band_keys, band_rows, cfg)
        needed = np.unique(pairs) if len(pairs) else np.empty(0, np.int64)
        shard_of = np.searchsorted(np.array(offsets), needed, side="right") - 1
        wanted = {i: needed[shard_of == i] - offsets[i] for i in range(len(shards)) if np.any(shard_of == i)}
        fetched = run_pass("verify", task_shingles, lambda i: (wanted[i], cfg), list(wanted)) if wanted else []
        cache: dict[int, np.ndarray] = {}
        for (i, rows), arrays in zip(wanted.items(), fetched):
            for row, array in zip(rows, arrays):
                cache[int(row) + offsets[i]] = array
        roots, best, near_counts = core.resolve_near(n, pairs, cache.__getitem__, cfg)
        del cache
        decisions = core.decide(n, ids, exact_rep, boiler_empty, roots, stripped_len, best, chars,
                                active & ~boiler_empty)
        timings["cluster_s"] = time.time() - started

        # D: write
        cluster_sizes = np.bincount(decisions.cluster, minlength=n)

        def write_args(i: int) -> tuple:
            dup = sl(decisions.duplicate_of, i)
            dup_ids = {row: ids[dup[row]] for row in np.flatnonzero(dup >= 0)}
            cluster_ids = [ids[c] for c in sl(decisions.cluster, i)]
            return (sl(decisions.status, i), sl(decisions.value, i), dup_ids, cluster_ids, sl(cluster_sizes, i),
                    sl(chars, i), cfg.output_format)

        run_pass("write", task_write, write_args)
        docs.finish(cfg.output_format)

        status = decisions.status
        removed = {reason: int(np.sum(status == code)) for code, reason in core.REASONS.items()}
        kept = int(np.sum(status == core.KEPT))
        sizes = Counter(int(c) for c in cluster_sizes[cluster_sizes > 0])
        per_source_chars: Counter = Counter()
        for source, c in zip(sources, chars):
            if c:
                per_source_chars[source] += int(c)
        kept_chars = int(np.sum(stripped_len[status == core.KEPT]))
        metrics: dict[str, float] = {
            "docs_in": n, "exact_removed": removed["exact"], "boilerplate_removed": removed["boilerplate"],
            "near_removed": removed["near"], "kept": kept, "boilerplate_units": len(boiler),
            "boilerplate_chars": int(chars.sum()), "chars_in": int(lengths.sum()), "chars_kept": kept_chars,
            "clusters_with_duplicates": sum(v for k, v in sizes.items() if k > 1),
            "largest_cluster": max(sizes) if sizes else 0,
            **{k: v for k, v in near_counts.items()},
            **{f"time.{k}": round(v, 3) for k, v in timings.items()},
            **{f"boilerplate_chars.{s or 'unknown'}": v for s, v in per_source_chars.items()},
            **sharded.quarantine_metrics(),
        }
        if timings.get("signatures_s"):
            metrics["signature_docs_per_s"] = n / timings["signatures_s"]
        bands, rows = cfg.lsh()
        write_plots(out, sizes, metrics)
        ctx.log.info("dedup: %d in -> %d kept; removed exact %d, boilerplate %d, near %d; %d quarantined; "
                     "%d candidate pairs, %d verified; boilerplate stripped %d chars",
                     n, kept, removed["exact"], removed["boilerplate"], removed["near"], sharded.quarantined,
                     near_counts["candidate_pairs"], near_counts["verified_pairs"], metrics["boilerplate_chars"])
        return StageResult(
            counts=docs.counts(sum(removed.values())), metrics=metrics,
            details={"lsh": {"bands": bands, "rows": rows}, "cluster_size_histogram": dict(sorted(sizes.items())),
                     "boilerplate_chars_per_source": dict(per_source_chars), "removed_by_reason": removed},
            outputs={**docs.outputs(cfg.output_format), "plot": "dedup_clusters.png"},
        )
