"""The loss curve a person looks at: training loss, validation loss, unigram baseline."""

from __future__ import annotations

from pathlib import Path


def write_loss_curve(path: Path, history: list[dict], unigram_entropy: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    if unigram_entropy:
        ax.axhline(unigram_entropy, color="grey", linestyle="--", label=f"unigram entropy {unigram_entropy:.2f}")
    for h in history:
        if h.get("event") == "resumed":
            ax.axvline(h["step"], color="red", alpha=0.4, label=f"resumed at {h['step']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("pretrain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
