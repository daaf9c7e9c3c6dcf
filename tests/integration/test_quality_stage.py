"""`lmforge stage quality` on plain JSONL: the standalone contract, broken records, and
what happens with no classifier anywhere."""

from __future__ import annotations

import json

import pytest

from tests.conftest import last_json, real_documents, run_cli

pytestmark = pytest.mark.integration


def test_standalone_quality_without_classifier(home, tmp_path):
    docs = real_documents(["linux-doc", "fortunes-de", "python-doc"], 12)
    docs.append({"id": "mail", "text": docs[0]["text"] + "\nWrite to maintainer@example.org or 8.8.8.8.",
                 "source": "planted"})
    path = tmp_path / "docs.jsonl"
    with open(path, "wb") as handle:
        for d in docs:
            handle.write(json.dumps(d).encode() + b"\n")
        handle.write(b"not json\n" + json.dumps({"id": "x", "text": ["list"]}).encode() + b"\n")
    out = tmp_path / "out"
    proc = run_cli(["stage", "quality", "--input", str(path), "--output", str(out)])
    assert "no quality classifier" in proc.stderr
    summary = last_json(proc.stdout)
    kept = [json.loads(x) for x in (out / "kept.jsonl").read_text().splitlines()]
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    quarantined = [json.loads(x) for x in (out / "quarantined.jsonl").read_text().splitlines()]
    assert summary["counts"] == {"in": len(docs) + 2, "kept": len(kept), "removed": len(removed),
                                 "quarantined": len(quarantined)} and len(quarantined) == 2
    assert sorted(d["id"] for d in kept + removed) == sorted(d["id"] for d in docs)
    assert all({"lang", "lang_score", "quality_score"} <= set(d) and d["quality_score"] is None
               for d in kept + removed)
    assert all({"reason", "filter", "value"} <= set(d) for d in removed)
    assert any(d["lang"] == "de" for d in kept + removed)
    planted = {d["id"]: d for d in kept + removed}["mail"]
    assert "maintainer@example.org" not in planted["text"] and "8.8.8.8" not in planted["text"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["details"]["classifier"].startswith("none:")
    assert [row["step"] for row in manifest["details"]["funnel"]][:2] == ["language", "min_words"]
    assert (out / "quality.png").stat().st_size > 5000
