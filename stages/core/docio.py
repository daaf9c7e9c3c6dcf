"""Documents in and out: JSONL / Parquet records, quarantine for what cannot be read.

A document is a dict with at least ``id`` and ``text``. Readers never raise on a bad
record: they yield a ``Quarantined`` with the reason, so a stage can count it and
keep going (in = kept + removed + quarantined).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Quarantined:
    """A record (or file) that could not become a document, and why."""

    reason: str
    detail: str
    origin: str  # file path or URL
    line: int | None = None
    id: str | None = None
    source: str | None = None
    raw: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def check_text(text: Any, max_chars: int) -> tuple[str, str] | None:
    """Why ``text`` cannot be a document (reason, detail), or None if it can."""
    if not isinstance(text, str):
        return "bad_text_type", f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty", "text is empty or whitespace"
    if len(text) > max_chars:
        return "too_large", f"{len(text)} chars > max_doc_chars={max_chars}"
    return None


def iter_jsonl(handle: BinaryIO, origin: str, max_chars: int) -> Iterator[dict[str, Any] | Quarantined]:
    """Records of a JSONL byte stream; a bad line is quarantined, the rest still read."""
    for _, item in numbered_jsonl(handle, origin, max_chars):
        yield item


def numbered_jsonl(handle: BinaryIO, origin: str,
                   max_chars: int) -> Iterator[tuple[int, dict[str, Any] | Quarantined]]:
    """(line number, record or quarantined line) of a JSONL byte stream."""
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, Quarantined("bad_encoding", f"not UTF-8: {exc.reason} at byte {exc.start}", origin, number,
                                      raw=raw.decode("utf-8", errors="replace")[:10_000])
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, Quarantined("bad_json", f"{exc.msg} at column {exc.colno}", origin, number, raw=line)
            continue
        if not isinstance(record, dict):
            yield number, Quarantined("not_object", f"a JSON {type(record).__name__}, not an object", origin, number,
                                      raw=line)
            continue
        for item in _checked(record, origin, number, max_chars, raw=line):
            yield number, item


def iter_parquet(path_or_handle: Any, origin: str, max_chars: int) -> Iterator[dict[str, Any] | Quarantined]:
    for _, item in numbered_parquet(path_or_handle, origin, max_chars):
        yield item


def numbered_parquet(path_or_handle: Any, origin: str,
                     max_chars: int) -> Iterator[tuple[int, dict[str, Any] | Quarantined]]:
    """(row number, record or quarantined row) of a Parquet file."""
    try:
        table_file = pq.ParquetFile(path_or_handle)
    except (pa.ArrowException, OSError) as exc:
        yield 0, Quarantined("unreadable", f"not a readable Parquet file: {exc}", origin)
        return
    number = 0
    for batch in table_file.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            for item in _checked(record, origin, number, max_chars):
                yield number, item


def _checked(record: dict[str, Any], origin: str, number: int, max_chars: int,
             raw: str | None = None) -> Iterator[dict[str, Any] | Quarantined]:
    record_id = record.get("id")
    if "text" not in record:
        yield Quarantined("no_text", "record has no 'text' field", origin, number,
                          id=None if record_id is None else str(record_id), raw=raw or json.dumps(record, default=str))
        return
    problem = check_text(record["text"], max_chars)
    if problem:
        reason, detail = problem
        yield Quarantined(reason, detail, origin, number, id=None if record_id is None else str(record_id),
                          raw=raw if raw is not None else json.dumps(record, default=str, ensure_ascii=False))
        return
    yield record


def read_documents(path: Path, max_chars: int = 1 << 62) -> Iterator[dict[str, Any] | Quarantined]:
    """Documents of a JSONL file, a Parquet file, or a folder of either (sorted)."""
    for _, _, item in located_documents(path, max_chars):
        yield item


def located_documents(path: Path, max_chars: int = 1 << 62) -> Iterator[tuple[str, int, dict[str, Any] | Quarantined]]:
    """(file, line or row number, document or quarantined record) of a JSONL or Parquet file or folder."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".parquet":
            for number, item in numbered_parquet(file, str(file), max_chars):
                yield str(file), number, item
        elif file.suffix in (".jsonl", ".json"):
            with open(file, "rb") as handle:
                for number, item in numbered_jsonl(handle, str(file), max_chars):
                    yield str(file), number, item


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str))
            handle.write("\n")
            count += 1
    return count


def append_jsonl(handle, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record, ensure_ascii=False, default=str))
    handle.write("\n")


DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("path", pa.string()),
        ("lang_hint", pa.string()),
    ]
)


def write_parquet(path: str | Path, records: list[dict[str, Any]]) -> int:
    """One Parquet shard, written whole or not at all (a local path or an s3:// location); known document
    fields typed, extra fields inferred."""
    from stages.core import storage

    extra = sorted({key for record in records for key in record} - set(DOCUMENT_SCHEMA.names))
    columns = {name: [record.get(name) for record in records] for name in DOCUMENT_SCHEMA.names + extra}
    fields = list(DOCUMENT_SCHEMA) + [pa.field(name, pa.array(columns[name]).type) for name in extra]
    table = pa.Table.from_pydict(columns, schema=pa.schema(fields))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(path, sink.getvalue().to_pybytes())
    return len(records)
