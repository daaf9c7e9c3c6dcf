"""Text normalization and stable hashes shared by every dedup step.

Exact dedup folds Unicode compatibility forms (NFKC), case, punctuation and whitespace,
so copies that differ only in those are one document. Hashes are blake2b-based:
stable across processes and machines (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import unicodedata

@functools.cache
def _punctuation_table() -> dict[int, None]:
    """Every Unicode punctuation code point (categories P*) -> deleted.

    Deleted, not spaced: "don't" and "dont" must fold to the same words.
    """
    return {
        cp: None for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)).startswith("P")
    }


@functools.cache
def _ascii_punctuation() -> bytes:
    return bytes(c for c in range(128) if unicodedata.category(chr(c)).startswith("P"))


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation deleted, whitespace collapsed.

    ASCII text (most of it) takes a byte-level fast path with the same result:
    NFKC leaves ASCII alone and casefold is lower there.
    """
    if text.isascii():
        text = text.lower().encode("ascii").translate(None, _ascii_punctuation()).decode("ascii")
    else:
        text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table())
    return " ".join(text.split())


def hash64(data: str | bytes) -> int:
    """A stable unsigned 64-bit hash."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def exact_key(text: str) -> int:
    """Hash of the normalized text: equal for copies differing only in case, space, punctuation."""
    return hash64(normalize(text))
