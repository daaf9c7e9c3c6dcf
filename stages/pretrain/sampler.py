"""Which sequences each rank reads at each step, from the step number alone.

A seeded permutation per epoch orders the training sequences; step s takes the next
``global_batch`` of that order and rank r takes its contiguous share. So every
sequence is seen once per epoch, ranks never overlap, the same global batch is
formed for any number of workers (only the split differs), and resuming needs nothing
but the step counter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class StepSampler:
    def __init__(self, num_sequences: int, global_batch: int, seed: int):
        if num_sequences <= 0:
            raise ValueError("no training sequences")
        self.n = num_sequences
        self.global_batch = global_batch
        self.seed = seed

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per training run: the cache goes with it
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_indices(self, step: int) -> np.ndarray:
        """The sequences of optimizer step ``step`` (0-based), across all ranks."""
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = np.divmod(positions, self.n)
        return np.array([self._order(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def rank_indices(self, step: int, rank: int, world: int) -> np.ndarray:
        share = self.global_batch // world
        return self.global_indices(step)[rank * share:(rank + 1) * share]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.n


def eval_indices(num_sequences: int, wanted: int, rank: int, world: int, micro: int) -> list[np.ndarray]:
    """Validation micro-batches of one rank; every rank gets the same number (ZeRO-3 needs it)."""
    per_rank = max(1, min(wanted, num_sequences) // world // micro) * micro
    order = np.arange(per_rank * world) % num_sequences
    mine = order[rank::world]
    return [mine[i:i + micro] for i in range(0, per_rank, micro)]
