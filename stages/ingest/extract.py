"""Per-file extraction: bytes of one file -> documents (or quarantined records).

Pure functions over one file, so Ray can run them anywhere and tests can call them
on small real files. HTML goes through trafilatura (the FineWeb recipe's extractor),
which strips markup and the page chrome it recognizes on a single page.
"""

from __future__ import annotations

import bz2
import gzip
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


def _maybe_decompress(data: bytes, name: str) -> tuple[bytes, str]:
    if name.endswith(".gz"):
        return gzip.decompress(data), name[:-3]
    if name.endswith(".bz2"):
        return bz2.decompress(data), name[:-4]
    return data, name


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


def extract(task: FileTask, data: bytes, max_chars: int) -> Iterator[dict[str, Any] | Quarantined]:
    """Documents in one file. Never raises on bad content: it quarantines instead."""
    base = {"source": task.source, "license": task.license, "path": task.relpath, "lang_hint": task.lang_hint}
    doc_id = f"{task.source}:{task.relpath}"
    try:
        if task.kind != "mediawiki-bz2":
            data, _ = _maybe_decompress(data, task.relpath)
    except (OSError, EOFError, zlib.error) as exc:
        yield Quarantined("unreadable", f"cannot decompress: {exc}", task.url, id=doc_id, source=task.source)
        return

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
