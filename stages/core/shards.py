"""Streaming a document input into work shards for Ray tasks, and stitching parts back.

The driver reads the input once, record by record, writing JSONL shards of a fixed
number of documents into the work location (a local folder, or object storage that every
node reaches: ``stages.core.storage``) and quarantining what cannot be a document; it never
holds more than one shard's ids. Shards are JSONL (not Parquet) so records keep any extra fields of
any type exactly as they came. ``drop_repeated_ids`` then quarantines every record whose
id an earlier record already used (Ray tasks, see ``unique_ids``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core import storage
from stages.core.docio import Quarantined, append_jsonl, located_documents
from stages.core.unique_ids import DUPLICATE_ID, IdLog, find_repeats, quarantine_record, remove_logs, repeated_rows


@dataclass
class Sharded:
    shards: list[str]  # locations (local paths or s3:// URIs)
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


def shard_input(source: Path, work: str | Path, shard_docs: int, max_chars: int, quarantine_path: Path) -> Sharded:
    shards: list[str] = []
    sizes: list[int] = []
    handle = None
    ids: IdLog | None = None
    reasons: Counter = Counter()
    count = documents = quarantined = 0
    with open(quarantine_path, "w", encoding="utf-8") as quarantine, ExitStack() as open_shard:
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
                    open_shard.close()
                    ids.close()
                    sizes.append(count)
                ids = IdLog(work, len(shards))
                shards.append(storage.join(work, f"shard-{len(shards):05d}.jsonl"))
                handle = open_shard.enter_context(storage.open_output(shards[-1]))
                count = 0
            record["id"] = str(record["id"])
            ids.add(record["id"], count, f"{origin} record {number}")
            append_jsonl(handle, record)
            count += 1
            documents += 1
        if handle is not None:
            open_shard.close()
            ids.close()
            sizes.append(count)
    return Sharded(shards, sizes, documents, quarantined, reasons)


def task_drop_repeats(shard: str, work: str, part: int) -> None:
    """Rewrite one shard without its repeated ids; they go to the part's quarantine file."""
    repeats = repeated_rows(work, part)
    lines = []
    with storage.open_text(shard) as src, \
            storage.open_output(storage.join(work, "_ids", f"dropped-{part:05d}.jsonl")) as quarantine:
        for row, line in enumerate(src):
            if row in repeats:
                append_jsonl(quarantine, quarantine_record(json.loads(line), repeats[row]))
            else:
                lines.append(line)
    storage.write_text(shard, "".join(lines))  # a shard is small (shard_docs documents): held once


def drop_repeated_ids(sharded: Sharded, work: Path, quarantine_path: Path, options: dict[str, Any],
                      label: str) -> Sharded:
    """Quarantine (``duplicate_id``) every document whose id an earlier one already used; needs Ray."""
    from stages.core.ray_runtime import run_tasks

    repeats = find_repeats(work, len(sharded.shards), options, label)
    if repeats:
        parts = sorted(repeats)
        run_tasks(f"{label}: drop repeated ids", task_drop_repeats,
                  [(str(sharded.shards[i]), str(work), i) for i in parts], options)
        concatenate([storage.join(work, "_ids", f"dropped-{i:05d}.jsonl") for i in parts], quarantine_path,
                    append=True)
    remove_logs(work)
    sizes = [size - repeats.get(i, 0) for i, size in enumerate(sharded.sizes)]
    for i, size in enumerate(sizes):
        if size == 0:
            storage.remove(sharded.shards[i])
    shards = [shard for shard, size in zip(sharded.shards, sizes) if size]
    total = sum(repeats.values())
    reasons = Counter(sharded.reasons)
    if total:
        reasons[DUPLICATE_ID] += total
    return Sharded(shards, [size for size in sizes if size], sharded.documents - total, sharded.quarantined + total,
                   reasons)


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    with storage.open_text(path) as handle:
        return [json.loads(line) for line in handle]


def iter_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    with storage.open_text(path) as handle:
        for line in handle:
            yield json.loads(line)


def concatenate(parts: list[str] | list[Path], dest: Path, append: bool = False) -> None:
    """Join part files (local or in object storage) in the given order into the local file ``dest`` (or after
    what it holds); then remove the parts."""
    with open(dest, "ab" if append else "wb") as out:
        for part in parts:
            if storage.exists(part):
                storage.copy_to(part, out)
                storage.remove(part)


def assemble_outputs(out: Path, work: str | Path, count: int, fmt: str) -> None:
    """Join per-shard ``removed-NNNNN.jsonl`` and ``kept-NNNNN.{jsonl,parquet}`` parts into
    the document-stage outputs, in shard order."""
    concatenate([storage.join(work, f"removed-{i:05d}.jsonl") for i in range(count)], out / "removed.jsonl")
    if fmt == "jsonl":
        concatenate([storage.join(work, f"kept-{i:05d}.jsonl") for i in range(count)], out / "kept.jsonl")
        return
    (out / "kept").mkdir()
    for i in range(count):
        part = storage.join(work, f"kept-{i:05d}.parquet")
        if storage.exists(part):
            storage.move_to_local(part, out / "kept" / f"part-{i:05d}.parquet")
