"""The packed token shard format and its reader (what pretraining reads).

In the spirit of Megatron's ``.bin``/``.idx``: ``NAME.bin`` is the token stream as a
flat little-endian uint16 (uint32 when the vocabulary needs it) array, fixed-length
sequences back to back, so ``np.memmap`` reads any sequence without parsing.
``NAME.idx`` is ``MAGIC``, a uint64 header length, a JSON header (dtype, vocab size,
sequence length, tokenizer digest, counts, pad and eos ids), then the document end
offsets and the sequence start offsets as int64 arrays. Document ends let the trainer
reset position ids and keep attention inside a document.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"LMFPACK1"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65_536 else np.dtype("<u4")


@dataclass(frozen=True)
class ShardHeader:
    dtype: str
    vocab_size: int
    seq_len: int
    tokenizer_sha256: str
    num_sequences: int
    num_documents: int
    real_tokens: int  # tokens before the trailing padding (only the last shard pads)
    pad_id: int
    eos_id: int
    split: str

    @property
    def num_tokens(self) -> int:
        return self.num_sequences * self.seq_len


def write_shard(prefix: str | Path, tokens: np.ndarray, doc_ends: np.ndarray, header: ShardHeader) -> None:
    """Write ``prefix.bin`` and ``prefix.idx``, each atomically (a local path or an s3:// location)."""
    from stages.core import storage

    assert tokens.size == header.num_tokens, (tokens.size, header.num_tokens)
    dtype = np.dtype(header.dtype)
    meta = json.dumps({"format": "lmforge-packed", "version": FORMAT_VERSION, **header.__dict__},
                      sort_keys=True).encode()
    seq_offsets = np.arange(header.num_sequences, dtype="<i8") * header.seq_len
    storage.write_bytes(f"{prefix}.bin", tokens.astype(dtype, copy=False).tobytes())
    storage.write_bytes(f"{prefix}.idx", b"".join([MAGIC, struct.pack("<Q", len(meta)), meta,
                                                   np.asarray(doc_ends, dtype="<i8").tobytes(),
                                                   seq_offsets.tobytes()]))


def read_header(idx_path: Path) -> tuple[ShardHeader, int]:
    with open(idx_path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{idx_path} is not an lmforge packed index (bad magic)")
        (length,) = struct.unpack("<Q", handle.read(8))
        meta: dict[str, Any] = json.loads(handle.read(length))
    if meta.pop("version") != FORMAT_VERSION or meta.pop("format") != "lmforge-packed":
        raise ValueError(f"{idx_path}: unsupported packed format")
    return ShardHeader(**meta), len(MAGIC) + 8 + length


class PackedShard:
    """One ``.bin``/``.idx`` pair: memmapped sequences plus document boundaries."""

    def __init__(self, prefix: Path):
        prefix = Path(prefix)
        self.prefix = prefix
        self.header, offset = read_header(prefix.with_suffix(".idx"))
        h = self.header
        index = np.fromfile(prefix.with_suffix(".idx"), dtype="<i8", offset=offset)
        self.doc_ends = index[: h.num_documents]
        self.seq_offsets = index[h.num_documents:]
        if self.seq_offsets.size != h.num_sequences:
            raise ValueError(f"{prefix}.idx is truncated: {self.seq_offsets.size} of {h.num_sequences} offsets")
        size = prefix.with_suffix(".bin").stat().st_size
        if size != h.num_tokens * np.dtype(h.dtype).itemsize:
            raise ValueError(f"{prefix}.bin has {size} bytes, the index says {h.num_tokens} tokens of {h.dtype}")
        self.tokens = np.memmap(prefix.with_suffix(".bin"), dtype=h.dtype, mode="r",
                                shape=(h.num_sequences, h.seq_len)) if h.num_sequences else \
            np.empty((0, h.seq_len), dtype=h.dtype)

    def __len__(self) -> int:
        return self.header.num_sequences

    def sequence(self, k: int) -> dict[str, np.ndarray]:
        """Tokens, position ids (reset at each document start) and document ids of sequence ``k``."""
        h = self.header
        start = int(self.seq_offsets[k])
        tokens = np.asarray(self.tokens[k], dtype=np.int64)
        doc_ids, positions = segment_ids(self.doc_ends, start, h.seq_len)
        real = np.arange(start, start + h.seq_len) < h.real_tokens
        return {"input_ids": tokens, "position_ids": positions, "document_ids": doc_ids, "real": real}


def segment_ids(doc_ends: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token document index (0 = the document the sequence starts in) and position in it.

    A sequence starts at position 0 even when it continues a document (Megatron's
    ``reset_position_ids``); a new document starts after every end inside the window.
    """
    lo = np.searchsorted(doc_ends, start, side="right")
    hi = np.searchsorted(doc_ends, start + length, side="left")
    starts = doc_ends[lo:hi] - start  # local offsets where a new document begins
    starts = starts[(starts > 0) & (starts < length)]
    marks = np.zeros(length, dtype=np.int64)
    marks[starts] = 1
    doc_ids = np.cumsum(marks)
    seg_start = np.zeros(length, dtype=np.int64)
    seg_start[starts] = starts
    seg_start = np.maximum.accumulate(seg_start)
    return doc_ids, np.arange(length, dtype=np.int64) - seg_start


def document_mask(document_ids: np.ndarray) -> np.ndarray:
    """Boolean [L, L] mask: query i may attend key j iff j <= i and both are in one document."""
    ids = np.asarray(document_ids)
    same = ids[:, None] == ids[None, :]
    return np.tril(same)


class PackedDataset:
    """All shards of one split in a token folder, indexed as one list of sequences."""

    def __init__(self, folder: Path, split: str):
        folder = Path(folder)
        self.shards = [PackedShard(p.with_suffix("")) for p in sorted(folder.glob(f"{split}-*.idx"))]
        if not self.shards:
            raise FileNotFoundError(f"no {split}-*.idx shards in {folder}")
        headers = {(s.header.seq_len, s.header.vocab_size, s.header.tokenizer_sha256) for s in self.shards}
        if len(headers) != 1:
            raise ValueError(f"{folder}: {split} shards disagree on seq_len/vocab/tokenizer: {sorted(headers)}")
        self.header = self.shards[0].header
        self.seq_len = self.header.seq_len
        self.vocab_size = self.header.vocab_size
        self.pad_id = self.header.pad_id
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def sequence(self, i: int) -> dict[str, np.ndarray]:
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self.shards[shard].sequence(i - int(self._starts[shard]))

    def batch(self, indices) -> dict[str, np.ndarray]:
        """Stacked sequences; ``labels`` are the tokens with padding set to -100 (ignored by the loss)."""
        items = [self.sequence(int(i)) for i in indices]
        out = {key: np.stack([item[key] for item in items]) for key in items[0]}
        out["labels"] = np.where(out.pop("real"), out["input_ids"], -100)
        return out

    def real_tokens(self) -> int:
        return sum(min(s.header.real_tokens, s.header.num_tokens) for s in self.shards)
