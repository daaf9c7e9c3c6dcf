"""One record per id: the first occurrence wins, later ones are quarantined as ``duplicate_id``
with where the first one was, so no stage ever sees two documents under one id (dedup would
call one a duplicate of itself, lineage would point at two texts).

It works like a shuffle, so that no process holds every id: whoever writes a part of the
data also writes that part's ids, sorted into ``FINE_BUCKETS`` hash buckets with their byte
offsets (``IdLog``); one Ray task per group of buckets reads its byte ranges from every part,
in part order, and writes the repeats it finds; the driver only sums counts per part. Then
each part with repeats drops them (``repeated_rows``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core import storage

FINE_BUCKETS = 64
MAX_TASKS = 64
DUPLICATE_ID = "duplicate_id"


def bucket_of(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little") % FINE_BUCKETS


def _ids_path(work: str | Path, part: int) -> str:
    return storage.join(work, "_ids", f"ids-{part:05d}.jsonl")


def _repeats_path(work: str | Path, group: int) -> str:
    return storage.join(work, "_ids", f"repeats-{group:03d}.jsonl")


class IdLog:
    """The ids of one part, in row order, written out grouped by bucket (held for one part only)."""

    def __init__(self, work: str | Path, part: int):
        self.path = _ids_path(work, part)
        self.rows: list[tuple[int, int, str, str, Any]] = []

    def add(self, doc_id: str, row: int, location: str, tag: Any = None) -> None:
        """``location`` tells a person where the record is; ``tag`` (JSON) is the writer's own note."""
        self.rows.append((bucket_of(doc_id), row, doc_id, location, tag))

    def close(self) -> None:
        self.rows.sort(key=lambda r: (r[0], r[1]))
        offsets = [0] * (FINE_BUCKETS + 1)
        position = 0
        with storage.open_output(self.path, text=False) as handle:
            for bucket, row, doc_id, location, tag in self.rows:
                line = (json.dumps([row, doc_id, location, tag], ensure_ascii=False) + "\n").encode("utf-8")
                handle.write(line)
                position += len(line)
                offsets[bucket + 1] = position
        for b in range(1, FINE_BUCKETS + 1):  # buckets with no ids end where the previous one did
            offsets[b] = max(offsets[b], offsets[b - 1])
        storage.write_text(f"{self.path}.idx", json.dumps(offsets))
        self.rows = []


def task_find_repeats(work: str, group: int, buckets: list[int], parts: int) -> dict[int, int]:
    """Repeated ids among ``buckets``, scanning parts in order: {part: repeats}; the repeats go to a file."""
    first: dict[str, str] = {}
    found: dict[int, int] = defaultdict(int)
    with storage.open_output(_repeats_path(work, group)) as out:
        for part in range(parts):
            path = _ids_path(work, part)
            if not storage.exists(f"{path}.idx"):
                continue
            offsets = json.loads(storage.read_bytes(f"{path}.idx"))
            with storage.RangeReader(path) as handle:
                for bucket in buckets:
                    chunk = handle.read_at(offsets[bucket], offsets[bucket + 1] - offsets[bucket])
                    for line in chunk.splitlines():
                        row, doc_id, location, _ = json.loads(line)
                        if doc_id in first:
                            out.write(json.dumps([part, row, doc_id, first[doc_id]], ensure_ascii=False) + "\n")
                            found[part] += 1
                        else:
                            first[doc_id] = location
    return dict(found)


def find_repeats(work: str | Path, parts: int, options: dict[str, Any], label: str) -> dict[int, int]:
    """Ray tasks over bucket groups; {part: repeated ids in it} (only parts that have some)."""
    from stages.core.ray_runtime import run_tasks

    if parts == 0:
        return {}
    tasks = max(1, min(MAX_TASKS, parts, FINE_BUCKETS))
    groups = [list(range(FINE_BUCKETS))[g::tasks] for g in range(tasks)]
    results = run_tasks(f"{label}: unique ids", task_find_repeats,
                        [(str(work), g, buckets, parts) for g, buckets in enumerate(groups)], options)
    total: dict[int, int] = defaultdict(int)
    for result in results:
        for part, count in result.items():
            total[int(part)] += count
    return dict(total)


@dataclass
class Repeat:
    first: str  # where the first record with this id is
    location: str  # where this one is
    tag: Any


def repeated_rows(work: str | Path, part: int) -> dict[int, Repeat]:
    """{row: Repeat} of one part's repeated ids (read in that part's drop task)."""
    firsts: dict[int, str] = {}
    for path in storage.list_files(storage.join(work, "_ids"), ".jsonl", prefix="repeats-"):
        with storage.open_text(path) as handle:
            for line in handle:
                p, row, _, where = json.loads(line)
                if p == part:
                    firsts[row] = where
    rows: dict[int, Repeat] = {}
    if firsts:
        with storage.open_text(_ids_path(work, part)) as handle:
            for line in handle:
                row, _, location, tag = json.loads(line)
                if row in firsts:
                    rows[row] = Repeat(firsts[row], location, tag)
    return rows


def quarantine_record(doc: dict[str, Any], repeat: Repeat) -> dict[str, Any]:
    return {"reason": DUPLICATE_ID, "detail": f"id {doc['id']!r} was already used by the record at {repeat.first}",
            "origin": repeat.location, "id": str(doc["id"]), "source": doc.get("source"),
            "raw": json.dumps(doc, ensure_ascii=False, default=str)[:10_000]}


def remove_logs(work: str | Path) -> None:
    storage.remove_tree(storage.join(work, "_ids"))
