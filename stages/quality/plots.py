"""The quality plot artifact: the filter funnel and the quality-score histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(out: Path, funnel: list[dict], scores: np.ndarray, kept_scores: np.ndarray, bins: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(4, 0.25 * len(funnel) + 1)))
    names = [row["step"] for row in funnel][::-1]
    left.barh(names, [row["docs_removed"] for row in funnel][::-1], color="#c44e52")
    left.set_xlabel("documents removed")
    left.set_title("Quality funnel (first filter that rejects)")
    left.tick_params(axis="y", labelsize=7)
    centers = (bins[:-1] + bins[1:]) / 2
    width = bins[1] - bins[0]
    if scores.sum():
        right.bar(centers, scores, width=width, color="#8c8c8c", label="all documents")
        right.bar(centers, kept_scores, width=width, color="#4c72b0", label="kept")
        right.legend()
    else:
        right.text(0.5, 0.5, "no classifier in this run", ha="center", va="center")
    right.set_xlabel("quality score (P[high quality])")
    right.set_ylabel("documents")
    right.set_title("Quality-score histogram")
    fig.tight_layout()
    path = out / "quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
