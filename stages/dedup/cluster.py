"""Candidate pairs from LSH buckets, verification, and clusters by union-find (the in-process
reference in ``core.dedup_documents``; the Ray stage finds the same clusters with
``components.py``).

Only integer document indices of candidate pairs are held here, never texts.
"""

from __future__ import annotations


import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def candidate_pairs(keys: np.ndarray, doc_index: np.ndarray, max_bucket: int = 50) -> np.ndarray:
    """Pairs (i < j) of documents sharing a bucket in any band.

    ``keys`` is [n, bands]; ``doc_index`` maps rows to global document indices. A
    bucket of k documents yields all its pairs when k <= ``max_bucket``, else a star
    around its smallest member (enough to connect it, linear instead of quadratic).
    """
    pairs: list[np.ndarray] = []
    for band in range(keys.shape[1]):
        column = keys[:, band]
        order = np.lexsort((doc_index, column))
        sorted_keys = column[order]
        pairs += bucket_pairs(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]), doc_index[order],
                              max_bucket)
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def bucket_pairs(starts_bucket: np.ndarray, members: np.ndarray, max_bucket: int) -> list[np.ndarray]:
    """Pair arrays of buckets laid out one after another (``starts_bucket[i]``: row i opens a bucket;
    members ascending within a bucket): every pair of a bucket of at most ``max_bucket``, else a star
    around its smallest member."""
    if not len(members):
        return []
    starts = np.flatnonzero(starts_bucket)
    ends = np.concatenate([starts[1:], [len(members)]])
    multi = np.flatnonzero(ends - starts > 1)
    pairs: list[np.ndarray] = []
    for s, e in zip(starts[multi], ends[multi]):
        group = members[s:e]
        if len(group) <= max_bucket:
            i, j = np.triu_indices(len(group), k=1)
            pairs.append(np.stack([group[i], group[j]], axis=1))
        else:
            pairs.append(np.stack([np.full(len(group) - 1, group[0]), group[1:]], axis=1))
    return pairs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of distinct shingle hashes."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Root index of each document's cluster (a document alone is its own root)."""
    uf = UnionFind(n)
    for a, b in pairs:
        uf.union(int(a), int(b))
    return uf.roots()


def representatives(roots: np.ndarray, lengths: np.ndarray, ids: list[str]) -> np.ndarray:
    """For each document, the index of its cluster's kept member: longest, then smallest id."""
    best: dict[int, int] = {}
    for i in sorted(range(len(ids)), key=lambda i: (-int(lengths[i]), ids[i])):
        best.setdefault(int(roots[i]), i)
    return np.array([best[int(root)] for root in roots], dtype=np.int64)
