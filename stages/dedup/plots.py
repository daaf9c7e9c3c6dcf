"""The dedup plot artifact: cluster-size histogram and the per-step document funnel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def write_plots(out: Path, sizes: Counter, metrics: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = sorted(sizes)
    left.bar(range(len(xs)), [sizes[x] for x in xs], color="#4c72b0", tick_label=[str(x) for x in xs])
    left.set_yscale("log")
    left.set_xlabel("cluster size (documents)")
    left.set_ylabel("clusters")
    left.set_title("Duplicate cluster sizes")
    left.tick_params(axis="x", labelrotation=90, labelsize=7)
    steps = ["docs_in", "exact_removed", "boilerplate_removed", "near_removed", "kept"]
    values = [metrics[s] for s in steps]
    right.barh(["in", "- exact", "- boilerplate", "- near", "kept"][::-1], values[::-1],
               color=["#55a868", "#c44e52", "#c44e52", "#c44e52", "#4c72b0"][::-1])
    for y, v in enumerate(values[::-1]):
        right.text(v, y, f" {int(v):,}", va="center", fontsize=8)
    right.set_title("Documents through dedup")
    fig.tight_layout()
    path = out / "dedup_clusters.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
