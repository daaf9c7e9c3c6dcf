"""MinHash signatures, vectorized over many documents, compatible with datasketch.

datasketch's ``MinHash.update_batch`` hashes every shingle with SHA-1 in Python and
then applies its affine permutations; that per-shingle Python call is the bottleneck
(bench/dedup_bench.py shows the figure). Here a shingle's 32-bit hash is built in
numpy from cached word hashes (or code points for character shingles), and the same
datasketch ``affine32`` permutations (same seed, same ``_fmix``) are applied to a whole
shard at once. ``ShingleHasher.shingle_hash32`` is the same hash as a plain function, so
``datasketch.MinHash(hashfunc=hasher.shingle_hash32, seed=..., scheme="affine32")`` fed the
same shingles gives identical hash values (tested), and ``to_lean_minhash`` turns a
row into a ``LeanMinHash`` that datasketch's LSH and Jaccard accept.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
from datasketch import LeanMinHash, MinHash

from stages.dedup.normalize import normalize

_M64 = (1 << 64) - 1
# distinct odd multipliers, one per position in a shingle (up to 32 positions)
_POSITION_MULTIPLIERS = np.array(
    [(0x9E3779B97F4A7C15 * (2 * i + 1) + 0x632BE59BD9B4E019 * i) & _M64 | 1 for i in range(32)], dtype=np.uint64
)
_WORD_CACHE_LIMIT = 2_000_000


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def word_hash64(word: str) -> int:
    """Stable 64-bit word hash from two seeded CRC-32s: 3x cheaper than blake2b here, and
    the shingle combiner and ``_fmix64`` mix it before anything compares it."""
    data = word.encode("utf-8")
    return (zlib.crc32(data) << 32) | zlib.crc32(data, 0x9E3779B9)


class _WordHashes(dict):
    """word -> word_hash64(word), computed on first use (lookups stay in C via ``map``)."""

    def __missing__(self, word: str) -> int:
        value = self[word] = word_hash64(word)
        return value


class ShingleHasher:
    """Turns normalized text into an array of 32-bit shingle hashes."""

    def __init__(self, unit: str = "word", size: int = 3):
        if unit not in ("word", "char") or not 1 <= size <= 32:
            raise ValueError(f"bad shingle spec {unit}/{size}")
        self.unit, self.size = unit, size
        self._words = _WordHashes()

    def _word_ids(self, words: list[str]) -> np.ndarray:
        if len(self._words) > _WORD_CACHE_LIMIT:
            self._words.clear()
        return np.fromiter(map(self._words.__getitem__, words), dtype=np.uint64, count=len(words))

    def tokens(self, normalized: str) -> np.ndarray:
        if self.unit == "word":
            return self._word_ids(normalized.split())
        return np.frombuffer(normalized.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)

    def hashes(self, normalized: str) -> np.ndarray:
        """32-bit hashes of the text's shingles (a text shorter than one shingle is one shingle)."""
        tokens = self.tokens(normalized)
        if len(tokens) == 0:
            return np.empty(0, dtype=np.uint32)
        width = min(self.size, len(tokens))
        count = len(tokens) - width + 1
        combined = np.zeros(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(width):
                combined += tokens[j : j + count] * _POSITION_MULTIPLIERS[j]
            return (_fmix64(combined) >> np.uint64(32)).astype(np.uint32)

    def shingle_hash32(self, shingle: tuple) -> int:
        """``hashes`` for one shingle, as a plain function: a datasketch ``hashfunc``."""
        total = 0
        for j, item in enumerate(shingle):
            token = word_hash64(item) if self.unit == "word" else ord(item)
            total = (total + token * int(_POSITION_MULTIPLIERS[j])) & _M64
        return int(_fmix64(np.array([total], dtype=np.uint64))[0] >> np.uint64(32))

    def shingles(self, normalized: str) -> list[tuple]:
        """The shingles themselves, as tuples (for datasketch's per-shingle hashfunc)."""
        items = normalized.split() if self.unit == "word" else list(normalized)
        if not items:
            return []
        width = min(self.size, len(items))
        return [tuple(items[i : i + width]) for i in range(len(items) - width + 1)]


@functools.cache
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters for (num_perm, seed)."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(shingle_hashes: list[np.ndarray], num_perm: int, seed: int, chunk: int = 4096) -> np.ndarray:
    """[n_docs, num_perm] uint32 MinHash values; an empty document gets all-max values.

    Permutations are laid out as rows and chunks kept near 4k shingles, so the
    [num_perm, chunk] product stays in cache and ``minimum.reduceat`` runs along
    contiguous memory: ~10x faster than the [chunk, num_perm] layout here.
    """
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]
    out = np.full((len(shingle_hashes), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    lengths = np.array([len(h) for h in shingle_hashes], dtype=np.int64)
    nonempty = np.flatnonzero(lengths)
    start = 0
    while start < len(nonempty):
        # take documents until the chunk of shingles is full (at least one document)
        end, total = start, 0
        while end < len(nonempty) and (end == start or total + lengths[nonempty[end]] <= chunk):
            total += lengths[nonempty[end]]
            end += 1
        docs = nonempty[start:end]
        values = _fmix32(np.concatenate([shingle_hashes[i] for i in docs]))
        with np.errstate(over="ignore"):
            permuted = a * values[None, :] + b
        offsets = np.concatenate([[0], np.cumsum(lengths[docs])[:-1]])
        out[docs] = np.minimum.reduceat(permuted, offsets, axis=1).T
        start = end
    return out


def to_lean_minhash(row: np.ndarray, seed: int) -> LeanMinHash:
    return LeanMinHash(seed=seed, hashvalues=row.astype(np.uint32), scheme="affine32")


def lsh_params(threshold: float, num_perm: int, verified: bool = False) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted areas of false positives and false negatives around ``threshold``
    (datasketch's optimizer).

    Unverified, a false positive is a wrong merge, so both errors weigh the same (datasketch's default: 18 bands of
    7 rows at 0.6, which finds a pair at Jaccard 0.7 only four times in five). Verified, a false positive costs one
    exact Jaccard check and is dropped, while a false negative is a copy kept for good: misses weigh 0.9 (25 bands
    of 5 rows at 0.6: a pair at 0.7 is missed one time in a hundred, for about 30 % more candidate pairs)."""
    from datasketch.lsh import _optimal_param

    fp_weight, fn_weight = (0.1, 0.9) if verified else (0.5, 0.5)
    return _optimal_param(threshold, num_perm, fp_weight, fn_weight)


def band_keys(signature_rows: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n_docs, bands] uint64 bucket keys: one hash of each band's ``rows`` values."""
    n = signature_rows.shape[0]
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signature_rows[:, band * rows : (band + 1) * rows].astype(np.uint64)
            acc = np.full(n, np.uint64(band) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for j in range(rows):
                acc = _fmix64(acc ^ (block[:, j] * _POSITION_MULTIPLIERS[j % 32]))
            keys[:, band] = acc
    return keys


def text_shingles(text: str, hasher: ShingleHasher) -> np.ndarray:
    """Distinct shingle hashes of a raw text (normalized first), for exact Jaccard checks."""
    return np.unique(hasher.hashes(normalize(text)))
