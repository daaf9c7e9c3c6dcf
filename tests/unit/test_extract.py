"""Extraction on small real files from the fetched corpus, and on broken ones."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest

from stages.core.docio import Quarantined
from stages.ingest.extract import FileTask, extract, kind_for_name
from stages.ingest.sources import DEMO_SOURCES, glob_regex, list_source_files
from tests.conftest import RAW, require_corpus


def _task(kind: str, relpath: str = "f", source: str = "test", lang: str | None = None) -> FileTask:
    return FileTask(source, f"/tmp/{relpath}", relpath, kind, "test-license", lang, 0)


def _split(items):
    items = list(items)
    return [i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)]


@pytest.fixture(scope="module", autouse=True)
def corpus():
    require_corpus()


def test_python_doc_page_loses_sidebar_and_keeps_content():
    path = RAW / "python3.11-doc/usr/share/doc/python3.11/html/library/bz2.html"
    html = path.read_bytes()
    docs, bad = _split(extract(_task("html", "library/bz2.html", "python-doc", "en"), html, 10**7))
    assert not bad and len(docs) == 1
    text = docs[0]["text"]
    for chrome in ("Show Source", "Report a Bug", "Previous topic", "Table of Contents"):
        assert chrome.encode() in html and chrome not in text
    assert "BZ2Compressor" in text and "bzip2" in text
    assert docs[0]["id"] == "python-doc:library/bz2.html" and docs[0]["lang_hint"] == "en"


def test_handbook_language_comes_from_the_path():
    spec = DEMO_SOURCES["debian-handbook"]
    files = list_source_files(spec, RAW)
    langs = {spec.lang_hint(rel) for rel, _ in files}
    assert {"en-US", "de-DE", "ja-JP", "zh-CN"} <= langs and None not in langs
    assert not any(rel.startswith("Common_Content/") for rel, _ in files)


def test_fortunes_split_into_one_document_per_quote():
    path = RAW / "fortunes-de/usr/share/games/fortunes/de/sprichworte"
    data = path.read_bytes()
    docs, bad = _split(extract(_task("fortune", "sprichworte", "fortunes-de", "de"), data, 10**7))
    expected = [chunk for chunk in data.decode().split("\n%\n") if chunk.strip("\n%").strip()]
    assert not bad and len(docs) == len(expected) >= 100
    assert all("\n%\n" not in d["text"] for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


def test_linux_doc_gz_is_decompressed():
    files = dict(list_source_files(DEMO_SOURCES["linux-doc"], RAW))
    rel = "process/coding-style.rst.gz"
    docs, bad = _split(extract(_task("text", rel, "linux-doc", "en"), files[rel].read_bytes(), 10**7))
    assert not bad and "Linux kernel coding style" in docs[0]["text"]


def test_mediawiki_export_gives_one_document_per_article():
    (rel, path), = list_source_files(DEMO_SOURCES["wikipedia-en"], RAW)
    docs, bad = _split(extract(_task("mediawiki-bz2", rel, "wikipedia-en", "en"), path.read_bytes(), 10**7))
    assert not bad and len(docs) > 50
    assert docs[0]["text"].startswith(docs[0]["id"].split("#", 1)[1])


def test_broken_inputs_are_quarantined_with_reasons():
    cases = {
        "bad_encoding": extract(_task("text", "latin1.txt"), "caf\xe9 cr\xe8me".encode("latin-1"), 10**7),
        "empty": extract(_task("text", "blank.txt"), b"  \n\t\n", 10**7),
        "too_large": extract(_task("text", "big.txt"), b"x" * 2000, 1000),
        "unreadable": extract(_task("text", "broken.gz"), b"not gzip at all", 10**7),
    }
    for reason, items in cases.items():
        docs, bad = _split(items)
        assert not docs and [q.reason for q in bad] == [reason]


def test_jsonl_records_are_checked_one_by_one():
    lines = [
        json.dumps({"id": "ok", "text": "real text", "extra": 1}),
        "{broken json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "nt"}),
        json.dumps({"id": "num", "text": 5}),
        json.dumps({"text": "no id here"}),
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"id": "bin", "text": "\xff\xfe"}\n'
    docs, bad = _split(extract(_task("jsonl", "recs.jsonl"), data, 10**7))
    assert [d["id"] for d in docs] == ["ok", "test:recs.jsonl#6"]
    assert docs[0]["extra"] == 1 and docs[0]["source"] == "test"
    assert [q.reason for q in bad] == ["bad_json", "not_object", "no_text", "bad_text_type", "bad_encoding"]
    assert bad[0].line == 2 and bad[0].raw == "{broken json\n"


def test_compressed_user_files_and_kinds():
    assert kind_for_name("a/b.jsonl.gz") == "jsonl" and kind_for_name("x.HTML") == "html"
    assert kind_for_name("notes") == "text" and kind_for_name("d.parquet") == "parquet"
    data = gzip.compress(b"hello from a gzipped file")
    docs, _ = _split(extract(_task("text", "notes.txt.gz"), data, 10**7))
    assert docs[0]["text"] == "hello from a gzipped file"
    docs, _ = _split(extract(_task("text", "notes.txt.bz2"), bz2.compress(b"bz2 text"), 10**7))
    assert docs[0]["text"] == "bz2 text"


def test_glob_star_stays_in_one_folder():
    assert glob_regex("*/*.html").match("en-US/apt.html")
    assert not glob_regex("*/*.html").match("en-US/sub/apt.html")
    assert glob_regex("**/*.rst.gz").match("a/b/c.rst.gz") and glob_regex("**/*.rst.gz").match("c.rst.gz")
