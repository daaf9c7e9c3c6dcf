"""Per-file extraction: bytes of one file -> documents (or quarantined records).

Pure functions over one file, so Ray can run them anywhere and tests can call them
on small real files. HTML goes through trafilatura (the FineWeb recipe's extractor),
which strips markup and the page chrome it recognizes on a single page.
"""

from __future__ import annotations

import bz2
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stages.core.docio import Quarantined, check_text, iter_jsonl, iter_parquet

FORTUNE_SEPARATOR = "\n%\n"


@dataclass(frozen=True)
class FileTask:
    """One file to extract, with the metadata every document from it carries."""

    source: str
    url: str  # local path or fsspec URL
    relpath: str
    kind: str
    license: str
    lang_hint: str | None
    size: int


def _decode(data: bytes) -> str:
    return data.decode("utf-8")


@dataclass
class Cut:
    """Where a compressed stream stops making sense: the bytes before it are intact."""

    compressed_at: int  # byte offset in the file where decompression stopped
    intact_bytes: int  # decompressed bytes before the cut
    why: str


def _decompressor(name: str):
    if name.endswith(".gz"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name.endswith(".bz2"):
        return bz2.BZ2Decompressor
    return None


def decompress_prefix(data: bytes, name: str, chunk: int = 1 << 12) -> tuple[bytes, Cut | None]:
    """All of ``data`` decompressed (every member of a multi-member file), or, when the stream is truncated
    or corrupt, what decompressed before the damage and where it is."""
    make = _decompressor(name)
    if make is None:
        return data, None
    out, position, decoder = [], 0, make()
    produced = 0
    while position < len(data):
        piece = data[position:position + chunk]
        try:
            block = decoder.decompress(piece)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            return b"".join(out), Cut(position, produced, f"corrupt data ({exc})")
        out.append(block)
        produced += len(block)
        if decoder.eof:
            used = len(piece) - len(decoder.unused_data)
            position += used
            if position < len(data) and data[position:].strip(b"\x00"):
                decoder = make()  # the next member of a concatenated file
                continue
            return b"".join(out), None
        position += len(piece)
    return b"".join(out), Cut(len(data), produced, "the compressed stream ends before its end marker")


def html_to_text(html: str) -> str:
    import trafilatura

    return trafilatura.extract(
        html, include_comments=False, include_tables=True, favor_recall=True, deduplicate=False
    ) or ""


def xml_to_text(data: bytes) -> str:
    from lxml import etree

    root = etree.fromstring(data, parser=etree.XMLParser(recover=False, resolve_entities=False, no_network=True))
    return "\n".join(t.strip() for t in root.itertext() if t.strip())


def iter_mediawiki(data: bytes) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every article page in a MediaWiki XML export."""
    import xml.etree.ElementTree as ET

    title, namespace = None, "0"
    for _, elem in ET.iterparse(io.BytesIO(data), events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            namespace = elem.text or "0"
        elif tag == "text" and namespace == "0":
            text = elem.text or ""
            if not text.lstrip().lower().startswith("#redirect"):
                yield title or "", text
        elif tag == "page":
            elem.clear()


def kind_for_name(name: str) -> str:
    """How to read a user's file, from its name (compression suffix ignored)."""
    base = name[:-3] if name.endswith(".gz") else name[:-4] if name.endswith(".bz2") else name
    suffix = base.rsplit(".", 1)[-1].lower() if "." in base.rsplit("/", 1)[-1] else ""
    return {
        "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet",
        "html": "html", "htm": "html", "xhtml": "html", "xml": "xml",
    }.get(suffix, "text")


RECORD_KINDS = ("jsonl", "fortune")  # files of many records: a cut loses only the records after it


def extract(task: FileTask, data: bytes, max_chars: int) -> Iterator[dict[str, Any] | Quarantined]:
    """Documents in one file. Never raises on bad content: it quarantines instead.

    A truncated or corrupt .gz/.bz2 file of records keeps every record that decompressed whole; the
    tail from the last complete record on is quarantined (``truncated``) with its offsets. A file that
    is one document is quarantined whole when it is cut.
    """
    base = {"source": task.source, "license": task.license, "path": task.relpath, "lang_hint": task.lang_hint}
    doc_id = f"{task.source}:{task.relpath}"
    if task.kind == "unlistable":
        yield Quarantined("unreadable", f"cannot list folder: {task.license}", task.url, id=doc_id, source=task.source)
        return
    cut = None
    if task.kind != "mediawiki-bz2":
        data, cut = decompress_prefix(data, task.relpath)
    if cut is not None:
        where = (f"{cut.why} at compressed byte {cut.compressed_at} of {task.size}; "
                 f"{cut.intact_bytes} bytes decompressed before it")
        if task.kind not in RECORD_KINDS or not data:
            yield Quarantined("truncated" if data else "unreadable", f"cannot decompress: {where}", task.url,
                              id=doc_id, source=task.source)
            return
        separator = b"\n" if task.kind == "jsonl" else FORTUNE_SEPARATOR.encode()
        end = data.rfind(separator)
        keep = 0 if end < 0 else end + len(separator)
        tail = data[keep:]
        data = data[:keep]
        yield Quarantined("truncated", f"{where}; the {len(tail)} bytes after the last complete record "
                                       f"(decompressed offset {keep}) are quarantined", task.url,
                          line=data.count(b"\n") + 1 if task.kind == "jsonl" else None, id=f"{doc_id}#tail",
                          source=task.source, raw=tail.decode("utf-8", errors="replace")[:10_000])

    if task.kind in ("jsonl", "parquet"):
        records = iter_jsonl(io.BytesIO(data), task.url, max_chars) if task.kind == "jsonl" else \
            iter_parquet(io.BytesIO(data), task.url, max_chars)
        for number, record in enumerate(records, start=1):
            if isinstance(record, Quarantined):
                record.source = task.source
                yield record
                continue
            doc = {**base, **record, "source": record.get("source") or task.source,
                   "license": record.get("license") or task.license}
            doc["id"] = str(record["id"]) if record.get("id") is not None else f"{doc_id}#{number}"
            yield doc
        return

    if task.kind == "mediawiki-bz2":
        try:
            pages = list(iter_mediawiki(bz2.decompress(data)))
        except Exception as exc:  # noqa: BLE001 - any parse failure quarantines the file
            yield Quarantined("unreadable", f"not a MediaWiki export: {exc}", task.url, id=doc_id, source=task.source)
            return
        for title, text in pages:
            yield from _doc(f"{doc_id}#{title}", f"{title}\n\n{text}", base, task, max_chars)
        return

    try:
        text_or_bytes: Any = data if task.kind == "xml" else _decode(data)
    except UnicodeDecodeError as exc:
        yield Quarantined("bad_encoding", f"not UTF-8: {exc.reason} at byte {exc.start}", task.url,
                          id=doc_id, source=task.source)
        return

    if task.kind == "fortune":
        for number, chunk in enumerate(text_or_bytes.split(FORTUNE_SEPARATOR), start=1):
            chunk = chunk.strip("\n%")
            if chunk.strip():
                yield from _doc(f"{doc_id}#{number}", chunk, base, task, max_chars)
        return

    try:
        if task.kind == "html":
            text = html_to_text(text_or_bytes)
        elif task.kind == "xml":
            text = xml_to_text(text_or_bytes)
        else:
            text = text_or_bytes
    except Exception as exc:  # noqa: BLE001 - a parser failure quarantines the file, never the stage
        yield Quarantined("unreadable", f"{task.kind} extraction failed: {type(exc).__name__}: {exc}", task.url,
                          id=doc_id, source=task.source)
        return
    yield from _doc(doc_id, text, base, task, max_chars)


def _doc(doc_id: str, text: str, base: dict[str, Any], task: FileTask,
         max_chars: int) -> Iterator[dict[str, Any] | Quarantined]:
    text = text.replace("\r\n", "\n").replace("\x00", "")
    problem = check_text(text, max_chars)
    if problem:
        reason, detail = problem
        yield Quarantined(reason, detail, task.url, id=doc_id, source=task.source)
        return
    yield {"id": doc_id, "text": text, **base}
