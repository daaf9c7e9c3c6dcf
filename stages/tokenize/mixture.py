"""Document-level split and source mixture, both decided by seeded hashes of the id.

Hashing (not a shuffled list) keeps the decision per document independent of shard
order and of the other documents, so the same document lands in the same split in
every run and on every actor.
"""

from __future__ import annotations

import hashlib
import math


def unit_hash(seed: int, salt: str, doc_id: str) -> float:
    """A uniform number in [0, 1) from (seed, salt, id)."""
    digest = hashlib.blake2b(f"{seed}\x00{salt}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(seed: int, doc_id: str, validation_fraction: float) -> str:
    return "val" if unit_hash(seed, "split", doc_id) < validation_fraction else "train"


def copies(seed: int, doc_id: str, weight: float) -> int:
    """How many times a train document appears: floor(w), plus one with probability frac(w)."""
    whole = math.floor(weight)
    extra = 1 if unit_hash(seed, "mixture", doc_id) < weight - whole else 0
    return whole + extra
