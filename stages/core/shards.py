"""Streaming a document input into work shards for Ray tasks, and stitching parts back.

The driver reads the input once, record by record, writing JSONL shards of a fixed
number of documents and quarantining what cannot be a document; it never holds more
than one shard's ids. Shards are JSONL (not Parquet) so records keep any extra fields of
any type exactly as they came. ``drop_repeated_ids`` then quarantines every record whose
id an earlier record already used (Ray tasks, see ``unique_ids``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core.docio import Quarantined, append_jsonl, located_documents
from stages.core.unique_ids import DUPLICATE_ID, IdLog, find_repeats, quarantine_record, remove_logs, repeated_rows


@dataclass
class Sharded:
    shards: list[Path]
    sizes: list[int]
    documents: int
    quarantined: int
    reasons: Counter = field(default_factory=Counter)  # quarantined records by reason

    def quarantine_metrics(self) -> dict[str, int]:
        return {f"quarantined.{reason}": n for reason, n in sorted(self.reasons.items())}

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
    ids: IdLog | None = None
    reasons: Counter = Counter()
    count = documents = quarantined = 0
    with open(quarantine_path, "w", encoding="utf-8") as quarantine:
        for origin, number, record in located_documents(source, max_chars):
            if isinstance(record, Quarantined):
                append_jsonl(quarantine, record.to_record())
                quarantined += 1
                reasons[record.reason] += 1
                continue
            if record.get("id") is None:
                append_jsonl(quarantine, Quarantined("no_id", "record has no 'id' field", origin, number,
                                                     raw=json.dumps(record, ensure_ascii=False, default=str)).to_record())
                quarantined += 1
                reasons["no_id"] += 1
                continue
            if handle is None or count == shard_docs:
                if handle is not None:
                    handle.close()
                    ids.close()
                    sizes.append(count)
                ids = IdLog(work, len(shards))
                shards.append(work / f"shard-{len(shards):05d}.jsonl")
                handle = open(shards[-1], "w", encoding="utf-8")
                count = 0
            record["id"] = str(record["id"])
            ids.add(record["id"], count, f"{origin} record {number}")
            append_jsonl(handle, record)
            count += 1
            documents += 1
    if handle is not None:
        handle.close()
        ids.close()
        sizes.append(count)
    return Sharded(shards, sizes, documents, quarantined, reasons)


def task_drop_repeats(shard: str, work: str, part: int) -> None:
    """Rewrite one shard without its repeated ids; they go to the part's quarantine file."""
    repeats = repeated_rows(Path(work), part)
    kept = Path(f"{shard}.unique")
    with open(shard, encoding="utf-8") as src, open(kept, "w", encoding="utf-8") as out, \
            open(Path(work) / "_ids" / f"dropped-{part:05d}.jsonl", "w", encoding="utf-8") as quarantine:
        for row, line in enumerate(src):
            if row in repeats:
                append_jsonl(quarantine, quarantine_record(json.loads(line), repeats[row]))
            else:
                out.write(line)
    kept.replace(shard)


def drop_repeated_ids(sharded: Sharded, work: Path, quarantine_path: Path, options: dict[str, Any],
                      label: str) -> Sharded:
    """Quarantine (``duplicate_id``) every document whose id an earlier one already used; needs Ray."""
    from stages.core.ray_runtime import run_tasks

    repeats = find_repeats(work, len(sharded.shards), options, label)
    if repeats:
        parts = sorted(repeats)
        run_tasks(f"{label}: drop repeated ids", task_drop_repeats,
                  [(str(sharded.shards[i]), str(work), i) for i in parts], options)
        concatenate([work / "_ids" / f"dropped-{i:05d}.jsonl" for i in parts], quarantine_path, append=True)
    remove_logs(work)
    sizes = [size - repeats.get(i, 0) for i, size in enumerate(sharded.sizes)]
    for i, size in enumerate(sizes):
        if size == 0:
            sharded.shards[i].unlink()
    shards = [shard for shard, size in zip(sharded.shards, sizes) if size]
    total = sum(repeats.values())
    reasons = Counter(sharded.reasons)
    if total:
        reasons[DUPLICATE_ID] += total
    return Sharded(shards, [size for size in sizes if size], sharded.documents - total, sharded.quarantined + total,
                   reasons)


def read_shard(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def concatenate(parts: list[Path], dest: Path, append: bool = False) -> None:
    """Join part files in the given order into ``dest`` (or after what it holds); then remove the parts."""
    with open(dest, "ab" if append else "wb") as out:
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
