"""Back-to-back packing: documents (each ending in EOS) filled into fixed-length rows.

A document that does not fit the rest of a row continues in the next one, so the only
padding in a whole split is the end of its very last row. Shards are packed in
parallel; each returns its unfinished tail and the tails are packed last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Packed:
    tokens: np.ndarray  # (rows * seq_len,) whole rows only
    doc_ends: np.ndarray  # int64 offsets (exclusive) into tokens of each document's end
    tail: np.ndarray  # tokens after the last whole row
    tail_doc_ends: np.ndarray  # document ends inside the tail, relative to the tail start


@dataclass
class Packer:
    """Accumulates documents; ``finish`` cuts whole rows and hands back the rest."""

    seq_len: int
    _parts: list[np.ndarray] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)
    _size: int = 0

    def add(self, doc_tokens: np.ndarray) -> None:
        if doc_tokens.size == 0:
            return
        self._parts.append(doc_tokens)
        self._size += int(doc_tokens.size)
        self._ends.append(self._size)

    def add_run(self, tokens: np.ndarray, ends: np.ndarray) -> None:
        """Append an already-concatenated run of documents (e.g. another shard's tail)."""
        if tokens.size == 0:
            return
        self._parts.append(tokens)
        self._ends.extend(int(e) + self._size for e in ends)
        self._size += int(tokens.size)

    def finish(self, pad_to_full_row: int | None = None) -> Packed:
        """Whole rows + tail; with ``pad_to_full_row=pad_id`` the tail is padded into a last row."""
        stream = np.concatenate(self._parts) if self._parts else np.empty(0, dtype=np.int64)
        ends = np.asarray(self._ends, dtype=np.int64)
        whole = (stream.size // self.seq_len) * self.seq_len
        if pad_to_full_row is not None and whole < stream.size:
            padded = whole + self.seq_len
            stream = np.concatenate([stream, np.full(padded - stream.size, pad_to_full_row, dtype=stream.dtype)])
            whole = padded
        tail = stream[whole:]
        return Packed(tokens=stream[:whole], doc_ends=ends[ends <= whole],
                      tail=tail, tail_doc_ends=ends[ends > whole] - whole)

    @property
    def size(self) -> int:
        return self._size


def packing_efficiency(real_tokens: int, rows: int, seq_len: int) -> float:
    """Share of real (non-pad) tokens in the packed rows."""
    return real_tokens / (rows * seq_len) if rows else 0.0
