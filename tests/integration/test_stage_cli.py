"""`lmforge stage ingest` / `python -m stages ingest` on plain files, broken ones included,
and the CLI's handling of bad configs (exit 2, the field named, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from stages.core.digests import sha256_file
from tests.conftest import REPO, TINY, last_json, run_cli


@pytest.fixture
def broken_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "html").mkdir(parents=True)
    handbook = REPO / ".lmforge/data/raw/debian-handbook/usr/share/doc/debian-handbook/html/en-US/apt.html"
    (corpus / "html" / "apt.html").write_bytes(handbook.read_bytes())
    (corpus / "notes.txt").write_text("A plain text note that is a real document.\n")
    (corpus / "latin1.txt").write_bytes("Ceci n'est pas de l'UTF-8: caf\xe9".encode("latin-1"))
    (corpus / "empty.md").write_text("   \n")
    (corpus / "huge.txt").write_text("word " * 4_200_000)  # 21 MB
    (corpus / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    records = [
        json.dumps({"id": "r1", "text": "first real record", "source": "mine", "license": "MIT"}),
        "this line is not json",
        json.dumps([1, 2, 3]),
        json.dumps({"id": "r4", "body": "no text field"}),
        json.dumps({"id": "r5", "text": ""}),
    ]
    (corpus / "records.jsonl").write_text("\n".join(records) + "\n")
    return corpus


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_stage_ingest_quarantines_broken_files_and_loses_nothing(home, broken_corpus, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["stage", "ingest", "--input", str(broken_corpus), "--output", str(out),
                    "--set", "ingest.output_format=jsonl"])
    summary = last_json(proc.stdout)
    counts = summary["counts"]
    kept = _read_jsonl(out / "kept.jsonl")
    quarantined = _read_jsonl(out / "quarantined.jsonl")
    assert counts == {"in": 11, "kept": 3, "removed": 0, "quarantined": 8}
    assert counts["in"] == len(kept) + len(quarantined) + len(_read_jsonl(out / "removed.jsonl"))
    assert sorted(d["id"] for d in kept) == ["r1", "user:html/apt.html", "user:notes.txt"]
    assert {d["id"]: d["source"] for d in kept}["r1"] == "mine"
    reasons = sorted(q["reason"] for q in quarantined)
    assert reasons == ["bad_encoding", "bad_json", "empty", "empty", "no_text", "not_object", "too_large", "unreadable"]
    assert all(q["detail"] and q["origin"] for q in quarantined)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["kept.jsonl"] == sha256_file(out / "kept.jsonl")
    assert summary["outputs"]["docs"] == str(out / "kept.jsonl")
    assert "Traceback" not in proc.stderr

    # python -m stages takes the same flags and gives byte-identical outputs
    out2 = tmp_path / "out2"
    proc2 = subprocess.run([sys.executable, "-m", "stages", "ingest", "--input", str(broken_corpus), "--output",
                            str(out2), "--set", "ingest.output_format=jsonl"], capture_output=True, text=True,
                           cwd=REPO, env=os.environ.copy(), timeout=600)
    assert proc2.returncode == 0, proc2.stderr
    manifest2 = json.loads((out2 / "manifest.json").read_text())
    assert manifest2["outputs"] == manifest["outputs"]
    assert manifest2["cache_key"] == manifest["cache_key"]


def test_stage_ingest_parquet_shards_from_demo_sources(home, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["stage", "ingest", "--config", str(TINY), "--output", str(out),
                    "--set", "ingest.sources=[fortunes-en, gutenberg]", "--set", "ingest.task_mb=0.2"])
    summary = last_json(proc.stdout)
    shards = sorted((out / "kept").glob("part-*.parquet"))
    assert len(shards) >= 2
    rows = [r for shard in shards for r in pq.read_table(shard).to_pylist()]
    assert len(rows) == summary["counts"]["kept"] > 100
    assert {r["source"] for r in rows} == {"fortunes-en", "gutenberg"}
    assert all(r["license"] and r["path"] and r["lang_hint"] == "en" for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "ingest.max_mb=1"], "unknown key 'ingest.max_mb'; allowed:"),
        (["--set", "ingest.output_format=xml"], "'ingest.output_format' ('xml')"),
        (["--set", "dedup.threshold=0.7"], "standalone 'ingest' takes 'ingest.<field>=...'"),
    ],
)
def test_stage_bad_config_exits_2_naming_the_field(home, tmp_path, args, needle):
    proc = run_cli(["stage", "ingest", "--output", str(tmp_path / "o"), *args], check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_run_bad_config_and_unknown_stage_exit_2(home):
    proc = run_cli(["run", "--config", str(TINY), "--set", "pipeline.seed=abc"], check=False)
    assert proc.returncode == 2 and "'pipeline.seed'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["run", "--config", str(TINY), "--until", "nosuchstage"], check=False)
    assert proc.returncode == 2 and "unknown stage 'nosuchstage'" in proc.stderr
    proc = run_cli(["stage", "nosuchstage", "--output", "/tmp/x"], check=False)
    assert proc.returncode == 2 and "unknown stage 'nosuchstage'" in proc.stderr


def test_help_explains_every_command():
    top = run_cli(["--help"]).stdout
    operations = ["rerun", "resume", "status", "cancel", "compare", "gc", "dashboard", "schedule", "schedules"]
    for command in ("run", "stage", "config", "ui", "down", "serve", "rollback", "generate", *operations):
        assert command in top
    for command in (["run"], ["stage"], ["config", "show"], ["config", "schema"], ["ui"], ["down"],
                    *[[c] for c in operations]):
        text = run_cli([*command, "--help"]).stdout
        assert "Usage:" in text and len(text) > 200
    assert "--until" in run_cli(["run", "--help"]).stdout


def test_config_schema_and_show(home):
    schema = json.loads(run_cli(["config", "schema"]).stdout)
    assert {"pipeline", "engines", "ingest"} <= set(schema["properties"])
    shown = run_cli(["config", "show", "--config", str(TINY), "--set", "ingest.task_mb=3"]).stdout
    assert "task_mb: 3" in shown and "name: tiny" in shown
