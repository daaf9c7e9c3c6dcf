"""What the dedup stage does when it runs: waves of Ray tasks that hand per-document rows to each
other through partitioned tables in the work store (``stages.core.partitioned``), so that the driver
holds per-shard counts and file names and never a per-document array: its memory does not grow with
the corpus (bench/README.md measures it at several sizes).

Waves (S = shards, P = partitions): exact keys by key hash (S) -> exact groups (P) -> boilerplate unit
counts by hash (S -> P) -> strip, sign and band (S) -> LSH buckets by (band, key) hash (P) ->
candidate pairs sent to the shard of their first document (S), which ships its shingles to the
shard of the second (S) for the exact Jaccard -> verified and exact-copy edges -> connected
components by large-star/small-star rounds (P per round) -> each member's facts to its component's
partition (S) -> the kept member of each component (P) -> every shard writes its kept and removed
records (S). Decisions are those of ``core.dedup_documents``: the same representatives, the same
``duplicate_of`` and cluster ids.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import storage
from stages.core.contract import StageContext, StageResult
from stages.core.docio import append_jsonl, write_parquet
from stages.core.document_shards import ShardedDocuments
from stages.core.partitioned import read_partition_of_all, remove, table_path, write_table
from stages.core.ray_runtime import run_tasks
from stages.core.shards import iter_shard, read_shard
from stages.dedup import core
from stages.dedup.cluster import bucket_pairs, jaccard
from stages.dedup.components import connected_components, labels, write_edges
from stages.dedup.config import DedupConfig
from stages.dedup.minhash import ShingleHasher, text_shingles
from stages.dedup.plots import write_plots

STRIPPED = "stripped-{:05d}.jsonl"
STATE = "state-{:05d}.npz"
_BAND_MIX = np.uint64(0x9E3779B97F4A7C15)

# the tables passed between waves, under <work>/shuffle/
EXACT_KEYS, EXACT_COPIES, UNITS = "exact-keys", "exact-copies", "units"
BUCKETS, CANDIDATES, PAIRS, SHINGLES = "buckets", "candidates", "pairs", "shingles"
EDGES, BEST, LABELS, MEMBERS, KEPT_MEMBERS = "edges", "best", "labels", "members", "kept-members"


def _ids(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf-8", "surrogatepass") for v in values], dtype=np.bytes_)


def _id(value: bytes) -> str:
    return bytes(value).decode("utf-8", "surrogatepass")


def shard_of(nodes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The shard holding each global document index."""
    return np.searchsorted(offsets, nodes, side="right") - 1


class Work:
    """Where one run's tables live, and the layout every task shares."""

    def __init__(self, root: str | Path, offsets: list[int], partitions: int):
        self.root = str(root)  # a local folder or an s3:// location
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.partitions = partitions

    @property
    def shards(self) -> int:
        return len(self.offsets)

    def table(self, name: str) -> str:
        return storage.join(self.root, "shuffle", name)

    def file(self, pattern: str, index: int) -> str:
        return storage.join(self.root, pattern.format(index))

    def state(self, index: int) -> dict[str, np.ndarray]:
        return dict(np.load(io.BytesIO(storage.read_bytes(self.file(STATE, index)))))

    def write(self, name: str, writer: str, partition: np.ndarray, partitions: int, columns: dict) -> None:
        write_table(table_path(self.table(name), writer), partition, partitions, columns)

    def read(self, name: str, part: int, **empty: np.ndarray) -> dict:
        """Partition ``part`` of table ``name``; ``empty`` gives the columns' shapes when nothing was written."""
        return read_partition_of_all(self.table(name), part) or dict(empty)

    def to_shards(self, name: str, writer: str, nodes: np.ndarray, columns: dict) -> None:
        self.write(name, writer, shard_of(nodes, self.offsets), self.shards, {"node": nodes, **columns})


def _exact_copies(work: Work, index: int) -> dict:
    return work.read(EXACT_COPIES, index, node=np.empty(0, np.int64), rep_id=np.empty(0, np.bytes_))


def _active(work: Work, index: int, size: int) -> np.ndarray:
    active = np.ones(size, dtype=bool)
    active[_exact_copies(work, index)["node"] - work.offsets[index]] = False
    return active


# A: exact copies

def task_exact(shard: str, index: int, work: Work, cfg: DedupConfig) -> int:
    """Exact keys of one shard, to the partition of their hash; returns its characters."""
    docs = read_shard(shard)
    keys, lengths = core.shard_exact([d["text"] for d in docs])
    if cfg.exact:
        nodes = work.offsets[index] + np.arange(len(docs), dtype=np.int64)
        work.write(EXACT_KEYS, f"m{index:05d}", keys % np.uint64(work.partitions), work.partitions,
                   {"key": keys, "length": lengths, "node": nodes, "id": _ids([d["id"] for d in docs])})
    return int(lengths.sum())


def task_exact_groups(part: int, work: Work) -> int:
    """The representative of every exact key (longest, then smallest id); copies go to their shard
    with it, and an edge copy-representative goes to the components."""
    t = work.read(EXACT_KEYS, part)
    if not t or not len(t["key"]):
        return 0
    order = np.lexsort((t["id"], -t["length"], t["key"]))
    key, node, ids = t["key"][order], t["node"][order], t["id"][order]
    starts = np.concatenate([[True], key[1:] != key[:-1]])
    rep = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
    copies = ~starts
    work.to_shards(EXACT_COPIES, f"m{part:05d}", node[copies], {"rep_id": ids[rep][copies]})
    write_edges(table_path(work.table(EDGES), f"exact-{part:05d}"), node[copies], node[rep][copies], work.partitions)
    return int(copies.sum())


# B: boilerplate units

def task_units(shard: str, index: int, work: Work, cfg: DedupConfig) -> None:
    texts = [d["text"] for d in iter_shard(shard)]
    keys, counts = core.shard_unit_counts(texts, _active(work, index, len(texts)), cfg)
    work.write(UNITS, f"m{index:05d}", keys % np.uint64(work.partitions), work.partitions,
               {"key": keys, "count": counts})


def task_unit_totals(part: int, work: Work, cfg: DedupConfig) -> np.ndarray:
    """The boilerplate units among one partition's unit hashes."""
    from stages.dedup.boilerplate import merge_counts

    t = work.read(UNITS, part)
    if not t:
        return np.empty(0, np.uint64)
    return core.resolve_boilerplate(*merge_counts([(t["key"], t["count"])]), cfg)


# C: strip, sign, band

def dedup_signatures(shard: str, index: int, work: Work, boilerplate: np.ndarray, cfg: DedupConfig) -> int:
    """One shard: strip boilerplate, MinHash, LSH band keys to the partition of (band, key). The
    stripped texts and the shard's per-document state stay in the shard's work files."""
    docs = [(d["id"], d["text"]) for d in iter_shard(shard)]
    texts = [text for _, text in docs]
    active = _active(work, index, len(texts))
    signed = core.shard_strip_and_sign(texts, active, boilerplate, cfg)
    with storage.open_output(work.file(STRIPPED, index)) as handle:
        for text in signed.stripped:
            handle.write(json.dumps(text, ensure_ascii=False) + "\n")
    empty = np.array([s is not None and not s.strip() for s in signed.stripped], dtype=bool)
    state = io.BytesIO()
    np.savez(state, active=active, empty=empty, chars=signed.boilerplate_chars, lengths=signed.lengths,
             ids=_ids([doc_id for doc_id, _ in docs]))  # the components pass needs the ids, not the shard
    storage.write_bytes(work.file(STATE, index), state.getvalue())
    keys = signed.band_keys
    if keys.size:
        bands = keys.shape[1]
        band = np.repeat(np.arange(bands, dtype=np.uint16)[None, :], len(keys), axis=0).ravel()
        flat = keys.ravel()
        nodes = np.repeat(work.offsets[index] + signed.band_rows, bands)
        part = (flat + band.astype(np.uint64) * _BAND_MIX) % np.uint64(work.partitions)
        work.write(BUCKETS, f"m{index:05d}", part, work.partitions, {"band": band, "key": flat, "node": nodes})
    return len(signed.band_rows)


def task_bucket_pairs(part: int, work: Work, cfg: DedupConfig) -> int:
    """Candidate pairs of one partition's LSH buckets, to the shard of their first document."""
    t = work.read(BUCKETS, part)
    if not t or not len(t["node"]):
        return 0
    order = np.lexsort((t["node"], t["key"], t["band"]))
    band, key, node = t["band"][order], t["key"][order], t["node"][order]
    opens = np.concatenate([[True], (band[1:] != band[:-1]) | (key[1:] != key[:-1])])
    found = bucket_pairs(opens, node, cfg.max_bucket)
    if not found:
        return 0
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
    work.to_shards(CANDIDATES, f"m{part:05d}", pairs[:, 0], {"other": pairs[:, 1]})
    return len(pairs)


def _shingles_of(work: Work, index: int, rows: np.ndarray, cfg: DedupConfig) -> dict[int, np.ndarray]:
    hasher = ShingleHasher(cfg.shingle_unit, cfg.shingle_size)
    wanted = set(int(r) for r in rows)
    found: dict[int, np.ndarray] = {}
    with storage.open_text(work.file(STRIPPED, index)) as handle:
        for row, line in enumerate(handle):
            if row in wanted:
                found[row] = text_shingles(json.loads(line), hasher)
    return found


def task_send_shingles(shard: str, index: int, work: Work, cfg: DedupConfig) -> int:
    """The shard of each candidate pair's first document: the unique pairs, and that document's
    shingles once per shard that holds a second document. Returns its count of candidate pairs."""
    t = work.read(CANDIDATES, index)
    if not t or not len(t["node"]):
        return 0
    pairs = np.unique(np.stack([t["node"], t["other"]], axis=1), axis=0)
    first, second = pairs[:, 0], pairs[:, 1]
    dest = shard_of(second, work.offsets)
    work.write(PAIRS, f"m{index:05d}", dest, work.shards, {"node": first, "other": second})
    sent = np.unique(np.stack([first, dest], axis=1), axis=0)
    shingles = _shingles_of(work, index, np.unique(first) - work.offsets[index], cfg)
    work.write(SHINGLES, f"m{index:05d}", sent[:, 1], work.shards,
               {"node": sent[:, 0], "shingles": [shingles[int(n - work.offsets[index])] for n in sent[:, 0]]})
    return len(pairs)


def task_verify(shard: str, index: int, work: Work, cfg: DedupConfig) -> int:
    """The shard of each pair's second document: exact Jaccard of the pair; a verified pair becomes an
    edge of the duplicate graph, and each end's best Jaccard goes to its shard. Returns verified pairs."""
    t = work.read(PAIRS, index)
    if not t or not len(t["node"]):
        return 0
    received = work.read(SHINGLES, index)
    theirs = dict(zip((int(n) for n in received["node"]), received["shingles"]))
    local = t["other"] - work.offsets[index]
    ours = _shingles_of(work, index, np.unique(local), cfg)
    values = np.array([jaccard(theirs[int(a)], ours[int(b)]) for a, b in zip(t["node"], local)], dtype=np.float64)
    keep = values >= cfg.threshold if cfg.verify else np.ones(len(values), dtype=bool)
    a, b, v = t["node"][keep], t["other"][keep], values[keep]
    work.to_shards(BEST, f"m{index:05d}", np.concatenate([a, b]), {"value": np.concatenate([v, v])})
    write_edges(table_path(work.table(EDGES), f"near-{index:05d}"), a, b, work.partitions)
    return int(keep.sum())


# components and their kept member

def task_labels(part: int, source: str, work: Work) -> int:
    """Each node of one partition of the final star with its component's smallest node, to its shard."""
    t = read_partition_of_all(source, part)
    if not t:
        return 0
    nodes, roots = labels(t["u"], t["v"])
    work.to_shards(LABELS, f"m{part:05d}", nodes, {"root": roots})
    return len(nodes)


def task_member_facts(shard: str, index: int, work: Work) -> None:
    """What choosing a component's kept member needs about this shard's members, to the component's partition."""
    t = work.read(LABELS, index)
    if not t or not len(t["node"]):
        return
    state = work.state(index)
    rows = t["node"] - work.offsets[index]
    near_active = state["active"] & ~state["empty"]
    score = np.where(near_active[rows], state["lengths"][rows], -1)
    ids = state["ids"]
    work.write(MEMBERS, f"m{index:05d}", t["root"] % work.partitions, work.partitions,
               {"root": t["root"], "node": t["node"], "score": score, "active": state["active"][rows].astype(np.int8),
                "id": ids[rows]})


def task_kept_members(part: int, work: Work) -> dict[int, int]:
    """Each component's kept member: the longest text among those still in play for near-dedup, then
    the smallest id (a component with none of those is an exact group around an emptied document,
    which stays its own cluster). Returns {component size: how many}."""
    t = work.read(MEMBERS, part)
    if not t or not len(t["node"]):
        return {}
    order = np.lexsort((t["id"], -t["active"], -t["score"], t["root"]))
    root, node, ids = t["root"][order], t["node"][order], t["id"][order]
    starts = np.flatnonzero(np.concatenate([[True], root[1:] != root[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(root)]]))
    group = np.repeat(np.arange(len(starts)), sizes)
    work.to_shards(KEPT_MEMBERS, f"m{part:05d}", node, {"rep": node[starts][group], "rep_id": ids[starts][group],
                                                         "size": sizes[group]})
    return dict(Counter(int(s) for s in sizes))


# D: write

def task_write(shard: str, index: int, work: Work, fmt: str) -> dict[str, Any]:
    """Every document of the shard, kept or removed with its reason, its duplicate and its cluster."""
    base = work.offsets[index]
    state = work.state(index)
    exact = _exact_copies(work, index)
    exact_of = {int(n - base): _id(r) for n, r in zip(exact["node"], exact["rep_id"])}
    kept_of = {int(n - base): (int(r - base), _id(i), int(s)) for n, r, i, s in
               zip(*(work.read(KEPT_MEMBERS, index).get(k, ()) for k in ("node", "rep", "rep_id", "size")))}
    best: dict[int, float] = {}
    found = work.read(BEST, index)
    for n, v in zip(found.get("node", ()), found.get("value", ())):
        row = int(n - base)
        best[row] = max(best.get(row, 0.0), float(v))
    removed_by: Counter = Counter()
    source_chars: Counter = Counter()
    kept_chars = 0
    kept_records: list[dict[str, Any]] = []  # only for Parquet output
    with storage.open_text(work.file(STRIPPED, index)) as stripped_file, \
            storage.open_output(storage.join(work.root, f"kept-{index:05d}.jsonl")) as kept, \
            storage.open_output(storage.join(work.root, f"removed-{index:05d}.jsonl")) as removed:
        for row, (doc, line) in enumerate(zip(iter_shard(shard), stripped_file)):
            chars = int(state["chars"][row])
            if chars:
                source_chars[str(doc.get("source") or "")] += chars
            rep_row, rep_id, size = kept_of.get(row, (row, doc["id"], 1))
            if row in exact_of:
                reason, value, duplicate_of = "exact", 1.0, exact_of[row]
            elif state["empty"][row]:
                reason, value, duplicate_of, rep_id = "boilerplate", chars, None, doc["id"]
            elif rep_row != row:
                reason, value, duplicate_of = "near", round(best.get(row, 0.0), 4), rep_id
            else:
                doc["text"] = json.loads(line)
                doc["boilerplate_chars"] = chars
                doc["dup_cluster"] = doc["id"]
                doc["dup_cluster_size"] = size
                kept_chars += int(state["lengths"][row])
                if fmt == "parquet":
                    kept_records.append(doc)
                else:
                    append_jsonl(kept, doc)
                continue
            removed_by[reason] += 1
            append_jsonl(removed, {**doc, "reason": reason, "filter": f"dedup.{reason}", "value": value,
                                   "duplicate_of": duplicate_of, "cluster_id": rep_id})
    if kept_records:
        write_parquet(storage.join(work.root, f"kept-{index:05d}.parquet"), kept_records)
    return {"removed": dict(removed_by), "source_chars": dict(source_chars), "kept_chars": kept_chars,
            "chars": int(state["chars"].sum())}


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
        n = docs.documents
        partitions = cfg.partitions or max(1, min(len(docs.shards), 256))
        work = Work(docs.work, sharded.offsets(), partitions)
        work_ref = ray.put(work)
        ctx.log.info("dedup: %d documents in %d shards, %d partitions (%d quarantined)", n, len(docs.shards),
                     partitions, sharded.quarantined)

        def shards_wave(label: str, step, *args) -> list[Any]:
            started = time.time()
            results = docs.map(label, step, lambda i: (work_ref, *args))
            timings[f"{label}_s"] = timings.get(f"{label}_s", 0.0) + time.time() - started
            return results

        def partitions_wave(label: str, step, *args, timing: str | None = None) -> list[Any]:
            started = time.time()
            results = run_tasks(f"{ctx.stage}: {label}", step, [(p, work_ref, *args) for p in range(partitions)],
                                docs.options)
            key = f"{timing or label}_s"
            timings[key] = timings.get(key, 0.0) + time.time() - started
            return results

        chars_in = sum(shards_wave("exact", task_exact, cfg))
        copies = 0
        if cfg.exact:
            copies = sum(partitions_wave("exact groups", task_exact_groups, timing="exact"))
            remove(work.table(EXACT_KEYS))
        boiler = np.empty(0, np.uint64)
        if cfg.boilerplate:
            shards_wave("boilerplate", task_units, cfg)
            found = partitions_wave("boilerplate units", task_unit_totals, cfg, timing="boilerplate")
            boiler = np.sort(np.concatenate(found)) if found else boiler
            remove(work.table(UNITS))
        shards_wave("signatures", dedup_signatures, ray.put(boiler), cfg)
        candidates = verified = 0
        if cfg.near:
            partitions_wave("buckets", task_bucket_pairs, cfg)
            remove(work.table(BUCKETS))
            candidates = sum(shards_wave("verify", task_send_shingles, cfg))
            remove(work.table(CANDIDATES))
            verified = sum(shards_wave("verify", task_verify, cfg))
            remove(work.table(PAIRS))
            remove(work.table(SHINGLES))
        sizes: Counter = Counter()
        rounds = 0
        if copies + verified:
            started = time.time()

            def run(label, fn, args_list):
                return run_tasks(f"{ctx.stage}: {label}", fn, args_list, docs.options)

            star, rounds = connected_components(work.table(EDGES), storage.join(work.root, "shuffle"), partitions, run)
            remove(work.table(EDGES))
            run("component labels", task_labels, [(p, star, work_ref) for p in range(partitions)])
            remove(star)
            timings["components_s"] = time.time() - started
            shards_wave("components", task_member_facts)
            for part in partitions_wave("components", task_kept_members):
                sizes.update({int(k): v for k, v in part.items()})
            remove(work.table(LABELS))
            remove(work.table(MEMBERS))
        sizes[1] += n - sum(size * count for size, count in sizes.items())
        if not sizes[1]:
            del sizes[1]

        written = shards_wave("write", task_write, cfg.output_format)
        remove(storage.join(work.root, "shuffle"))
        docs.finish(cfg.output_format)

        removed = {reason: sum(w["removed"].get(reason, 0) for w in written) for reason in core.REASONS.values()}
        kept = n - sum(removed.values())
        per_source_chars: Counter = Counter()
        for w in written:
            per_source_chars.update(w["source_chars"])
        boilerplate_chars = sum(w["chars"] for w in written)
        metrics: dict[str, float] = {
            "docs_in": n, "exact_removed": removed["exact"], "boilerplate_removed": removed["boilerplate"],
            "near_removed": removed["near"], "kept": kept, "boilerplate_units": len(boiler),
            "boilerplate_chars": boilerplate_chars, "chars_in": chars_in,
            "chars_kept": sum(w["kept_chars"] for w in written),
            "clusters_with_duplicates": sum(v for k, v in sizes.items() if k > 1),
            "largest_cluster": max(sizes) if sizes else 0,
            "candidate_pairs": candidates, "verified_pairs": verified, "partitions": partitions,
            "component_rounds": rounds,
            **{f"time.{k}": round(v, 3) for k, v in timings.items()},
            **{f"boilerplate_chars.{s or 'unknown'}": v for s, v in per_source_chars.items()},
            **sharded.quarantine_metrics(),
        }
        if timings.get("signatures_s"):
            metrics["signature_docs_per_s"] = n / timings["signatures_s"]
        bands, rows = cfg.lsh()
        write_plots(out, sizes, metrics)
        ctx.log.info("dedup: %d in -> %d kept; removed exact %d, boilerplate %d, near %d; %d quarantined; "
                     "%d candidate pairs, %d verified, components in %d rounds; boilerplate stripped %d chars",
                     n, kept, removed["exact"], removed["boilerplate"], removed["near"], sharded.quarantined,
                     candidates, verified, rounds, boilerplate_chars)
        return StageResult(
            counts=docs.counts(sum(removed.values())), metrics=metrics,
            details={"lsh": {"bands": bands, "rows": rows}, "cluster_size_histogram": dict(sorted(sizes.items())),
                     "boilerplate_chars_per_source": dict(per_source_chars), "removed_by_reason": removed},
            outputs={**docs.outputs(cfg.output_format), "plot": "dedup_clusters.png"},
        )
