"""Connected components of the duplicate graph without gathering it: alternating large-star and
small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014) over
edge tables partitioned by node, each round one Ray task per partition.

Large-star links every neighbour larger than a node to the smallest node of its neighbourhood;
small-star links a node and its smaller neighbours to the smallest of them. Both keep the
components; when a pair of rounds changes no edge, every component is a star around its smallest
node, so each node's label is the smallest node it touches. Rounds grow like log(n) in the worst
case and take two or three on duplicate clusters. A task holds one partition's edges, never the
graph, and the driver only adds up each round's count of changed edges.
"""

from __future__ import annotations

import numpy as np

from stages.core.partitioned import read_partition_of_all, remove, table_path, write_table
from stages.core.storage import join

MAX_ROUNDS = 200


def _sorted_unique(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(u):
        return u, v
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)  # sorted by u, then v
    return pairs[:, 0], pairs[:, 1]


def _group_first(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each row's group start, whether each row starts its group) for sorted ``u``."""
    starts = np.concatenate([[True], u[1:] != u[:-1]])
    first = np.maximum.accumulate(np.where(starts, np.arange(len(u)), 0))
    return first, starts


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows (u, v): every neighbour v of u, both directions present. Returns edges (larger, smaller)
    linking each v > u to min(u, neighbours of u), and how many edges that changed."""
    u, v = _sorted_unique(u, v)
    if not len(u):
        return u, v, 0
    first, _ = _group_first(u)
    smallest = np.minimum(u, v[first])  # v is sorted within a group, so its first v is the smallest
    out = v > u
    changed = int(np.sum(out & (smallest < u)))
    return v[out], smallest[out], changed


def small_star(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows (u, w) with w < u: u's smaller neighbours. Returns edges (x, m) linking u and each of its
    smaller neighbours to m, the smallest of them, and how many nodes had more than one."""
    u, w = _sorted_unique(u, w)
    if not len(u):
        return u, w, 0
    first, starts = _group_first(u)
    smallest = w[first]
    sizes = np.diff(np.concatenate([np.flatnonzero(starts), [len(u)]]))
    others = w != smallest
    x = np.concatenate([u[starts], w[others]])
    m = np.concatenate([smallest[starts], smallest[others]])
    return x, m, int(np.sum(sizes > 1))


def labels(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a star graph's rows (u, v), both directions present: (each node, its component's smallest node)."""
    u, v = _sorted_unique(u, v)
    if not len(u):
        return u, v
    first, starts = _group_first(u)
    return u[starts], np.minimum(u, v[first])[starts]


def write_edges(path: str, a: np.ndarray, b: np.ndarray, partitions: int) -> None:
    """Undirected edges as rows (u, v) in both directions, each row in partition ``u % partitions``."""
    u = np.concatenate([a, b]).astype(np.int64)
    v = np.concatenate([b, a]).astype(np.int64)
    write_table(path, u % partitions, partitions, {"u": u, "v": v})


def _edges(directory: str, part: int) -> tuple[np.ndarray, np.ndarray]:
    table = read_partition_of_all(directory, part)
    if not table:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return table["u"], table["v"]


def task_large_star(source: str, dest: str, part: int, partitions: int) -> int:
    larger, smaller, changed = large_star(*_edges(source, part))
    # small-star groups an edge by its larger end
    write_table(table_path(dest, f"m{part:05d}"), larger % partitions, partitions, {"u": larger, "v": smaller})
    return changed


def task_small_star(source: str, dest: str, part: int, partitions: int) -> int:
    x, m, changed = small_star(*_edges(source, part))
    write_edges(table_path(dest, f"m{part:05d}"), x, m, partitions)
    return changed


def connected_components(edges: str, work: str, partitions: int, run) -> tuple[str, int]:
    """Rounds until nothing changes, starting from ``edges`` (rows written by ``write_edges``).
    ``run(label, fn, args_list)`` runs tasks; returns the folder of the final star's edges and the rounds."""
    source = edges
    for round_ in range(1, MAX_ROUNDS + 1):
        star_in, star_out = join(work, f"cc-{round_:03d}-large"), join(work, f"cc-{round_:03d}-small")
        large = run(f"components round {round_} (large-star)", task_large_star,
                    [(source, star_in, p, partitions) for p in range(partitions)])
        if source != edges:
            remove(source)
        small = run(f"components round {round_} (small-star)", task_small_star,
                    [(star_in, star_out, p, partitions) for p in range(partitions)])
        remove(star_in)
        source = star_out
        if sum(large) == 0 and sum(small) == 0:
            return source, round_
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
