"""The dedup algorithm as steps over shards of documents, independent of Ray.

Each ``shard_*`` function takes one shard's documents and returns small arrays; the
``resolve_*`` functions combine them across shards. The Ray stage runs the shard
steps as tasks; ``dedup_documents`` runs the same steps in one process (tests and the
quality benchmark use it), so both give the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.dedup import boilerplate as bp
from stages.dedup.cluster import candidate_pairs, clusters, jaccard, representatives
from stages.dedup.config import DedupConfig
from stages.dedup.minhash import ShingleHasher, band_keys, signatures, text_shingles
from stages.dedup.normalize import exact_key, normalize

KEPT, EXACT, BOILERPLATE, NEAR = 0, 1, 2, 3
REASONS = {EXACT: "exact", BOILERPLATE: "boilerplate", NEAR: "near"}


def shard_exact(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(normalized-text hash, length) of each document."""
    keys = np.fromiter((exact_key(t) for t in texts), dtype=np.uint64, count=len(texts))
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return keys, lengths


def resolve_exact(keys: np.ndarray, lengths: np.ndarray, ids: list[str]) -> np.ndarray:
    """Index of each document's exact representative (itself when it is one)."""
    _, roots = np.unique(keys, return_inverse=True)
    return representatives(roots, lengths, ids)


def shard_unit_counts(texts: list[str], active: np.ndarray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    return bp.count_units(
        bp.document_unit_keys(t, cfg.boilerplate_unit, cfg.boilerplate_min_chars)
        for t, a in zip(texts, active) if a
    )


def resolve_boilerplate(keys: np.ndarray, counts: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    return np.sort(keys[counts >= cfg.boilerplate_min_docs])


@dataclass
class SignedShard:
    stripped: list[str | None]  # None for documents already removed
    boilerplate_chars: np.ndarray
    lengths: np.ndarray  # of the stripped text
    band_keys: np.ndarray  # [n_active_nonempty, bands]
    band_rows: np.ndarray  # local row of each band_keys row


def shard_strip_and_sign(texts: list[str], active: np.ndarray, boilerplate: np.ndarray,
                         cfg: DedupConfig, hasher: ShingleHasher | None = None) -> SignedShard:
    hasher = hasher or ShingleHasher(cfg.shingle_unit, cfg.shingle_size)
    stripped: list[str | None] = []
    chars = np.zeros(len(texts), dtype=np.int64)
    for i, (text, a) in enumerate(zip(texts, active)):
        if not a:
            stripped.append(None)
            continue
        if cfg.boilerplate:
            text, chars[i] = bp.strip_boilerplate(text, boilerplate, cfg.boilerplate_unit, cfg.boilerplate_min_chars)
        stripped.append(text)
    lengths = np.array([len(t) if t is not None else 0 for t in stripped], dtype=np.int64)
    rows = np.array([i for i, t in enumerate(stripped) if t is not None and t.strip()], dtype=np.int64)
    if cfg.near and len(rows):
        bands, width = cfg.lsh()
        sig = signatures([hasher.hashes(normalize(stripped[i])) for i in rows], cfg.num_perm, cfg.minhash_seed)
        keys = band_keys(sig, bands, width)
    else:
        keys = np.empty((0, 0), dtype=np.uint64)
        rows = rows[:0]
    return SignedShard(stripped, chars, lengths, keys, rows)


@dataclass
class Decisions:
    """Per document: status, the document it duplicates, its cluster's kept member, a value."""

    status: np.ndarray
    duplicate_of: np.ndarray  # index, -1 when kept
    cluster: np.ndarray  # index of the kept member of its cluster
    value: np.ndarray  # exact: 1.0; near: best verified Jaccard; boilerplate: chars removed
    stats: dict[str, Any] = field(default_factory=dict)


def near_pairs(keys: np.ndarray, rows: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Candidate pairs (global indices) from the band keys of the documents still in play."""
    if not cfg.near or not len(rows):
        return np.empty((0, 2), np.int64)
    return candidate_pairs(keys, rows, cfg.max_bucket)


def resolve_near(n: int, pairs: np.ndarray, shingles_of, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(cluster root of each doc, best Jaccard per doc, counts) from verified candidate pairs."""
    best = np.zeros(n, dtype=np.float64)
    kept_pairs = []
    for a, b in pairs:
        value = jaccard(shingles_of(int(a)), shingles_of(int(b)))
        if not cfg.verify or value >= cfg.threshold:
            kept_pairs.append((a, b))
            best[a] = max(best[a], value)
            best[b] = max(best[b], value)
    verified = np.array(kept_pairs, dtype=np.int64).reshape(-1, 2)
    return clusters(n, verified), best, {"candidate_pairs": len(pairs), "verified_pairs": len(verified)}


def decide(n: int, ids: list[str], exact_rep: np.ndarray, boiler_empty: np.ndarray, roots: np.ndarray,
           lengths: np.ndarray, best: np.ndarray, boilerplate_chars: np.ndarray, near_active: np.ndarray) -> Decisions:
    status = np.full(n, KEPT, dtype=np.int8)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    value = np.zeros(n, dtype=np.float64)
    near_rep = representatives(roots, np.where(near_active, lengths, -1), ids)
    final = np.arange(n, dtype=np.int64)
    for i in range(n):
        if exact_rep[i] != i:
            status[i], duplicate_of[i], value[i] = EXACT, exact_rep[i], 1.0
        elif boiler_empty[i]:
            status[i], value[i] = BOILERPLATE, boilerplate_chars[i]
        elif near_rep[i] != i:
            status[i], duplicate_of[i], value[i] = NEAR, near_rep[i], best[i]
            final[i] = near_rep[i]
    # an exact copy belongs to the cluster its representative ended in
    cluster = np.where(status == EXACT, final[exact_rep], final)
    cluster = np.where(status == BOILERPLATE, np.arange(n), cluster)
    return Decisions(status, duplicate_of, cluster, value)


def dedup_documents(docs: list[dict[str, Any]], cfg: DedupConfig) -> Decisions:
    """All steps in one process over a list of documents (same functions as the Ray stage)."""
    texts = [d["text"] for d in docs]
    ids = [str(d["id"]) for d in docs]
    n = len(docs)
    keys, lengths = shard_exact(texts)
    exact_rep = resolve_exact(keys, lengths, ids) if cfg.exact else np.arange(n)
    active = exact_rep == np.arange(n)
    boiler = np.empty(0, np.uint64)
    if cfg.boilerplate:
        boiler = resolve_boilerplate(*shard_unit_counts(texts, active, cfg), cfg)
    hasher = ShingleHasher(cfg.shingle_unit, cfg.shingle_size)
    signed = shard_strip_and_sign(texts, active, boiler, cfg, hasher)
    boiler_empty = np.array([s is not None and not s.strip() for s in signed.stripped])
    near_active = active & ~boiler_empty

    def shingles_of(i: int) -> np.ndarray:
        return text_shingles(signed.stripped[i], hasher)

    pairs = near_pairs(signed.band_keys, signed.band_rows, cfg)
    roots, best, counts = resolve_near(n, pairs, shingles_of, cfg)
    decisions = decide(n, ids, exact_rep, boiler_empty, roots, signed.lengths, best, signed.boilerplate_chars,
                       near_active)
    decisions.stats = {**counts, "boilerplate_units": int(len(boiler))}
    decisions.stats["stripped"] = signed.stripped
    return decisions
