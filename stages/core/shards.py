"""Streaming a document input into work shards for Ray tasks, and stitching parts back.

The driver reads the input once, record by record, writing JSONL shards of a fixed
number of documents and quarantining what cannot be a document; it never holds more
than one record. Shards are JSONL (not Parquet) so records keep any extra fields of
any type exactly as they came.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core.docio import Quarantined, append_jsonl, read_documents


@dataclass
class Sharded:
    shards: list[Path]
    sizes: list[int]
    documents: int
    quarantined: int

    def offsets(self) -> list[int]:
        out, total = [], 0
        for size in self.sizes:
            out.append(total)
            total += size
        return out


def shard_input(source: Path, work: Path, shard_docs: int, max_chars: int, quarantine_path: Path) -> Sharded:
    work.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    sizes: list[int] = []
    handle = None
    count = documents = quarantined = 0
    with open(quarantine_path, "w", encoding="utf-8") as quarantine:
        for record in read_documents(source, max_chars):
            if isinstance(record, Quarantined):
                append_jsonl(quarantine, record.to_record())
                quarantined += 1
                continue
            if record.get("id") is None:
                append_jsonl(quarantine, Quarantined("no_id", "record has no 'id' field", str(source),
                                                     raw=json.dumps(record, ensure_ascii=False, default=str)).to_record())
                quarantined += 1
                continue
            if handle is None or count == shard_docs:
                if handle is not None:
                    handle.close()
                    sizes.append(count)
                shards.append(work / f"shard-{len(shards):05d}.jsonl")
                handle = open(shards[-1], "w", encoding="utf-8")
                count = 0
            record["id"] = str(record["id"])
            append_jsonl(handle, record)
            count += 1
            documents += 1
    if handle is not None:
        handle.close()
        sizes.append(count)
    return Sharded(shards, sizes, documents, quarantined)


def read_shard(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def concatenate(parts: list[Path], dest: Path) -> None:
    """Join part files in the given order into ``dest`` (then remove the parts)."""
    with open(dest, "wb") as out:
        for part in parts:
            if part.exists():
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
                part.unlink()


def assemble_outputs(out: Path, work: Path, count: int, fmt: str) -> None:
    """Join per-shard ``removed-NNNNN.jsonl`` and ``kept-NNNNN.{jsonl,parquet}`` parts into
    the document-stage outputs, in shard order."""
    concatenate([work / f"removed-{i:05d}.jsonl" for i in range(count)], out / "removed.jsonl")
    if fmt == "jsonl":
        concatenate([work / f"kept-{i:05d}.jsonl" for i in range(count)], out / "kept.jsonl")
        return
    (out / "kept").mkdir()
    for i in range(count):
        part = work / f"kept-{i:05d}.parquet"
        if part.exists():
            part.rename(out / "kept" / f"part-{i:05d}.parquet")
