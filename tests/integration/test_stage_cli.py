"""`lmforge stage ingest` / `python -m stages ingest` on plain files, broken ones included,
and the CLI's handling of bad configs (exit 2, the field named, no traceback)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stages.core.digests import sha256_file
from tests.conftest import LMFORGE, REPO, TINY, last_json, run_cli, unprivileged


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
        json.dumps({"id": "r1", "text": "a second record under the id r1"}),
    ]
    (corpus / "records.jsonl").write_text("\n".join(records) + "\n")
    (corpus / "then.jsonl").write_text(json.dumps({"id": "r1", "text": "a third r1, in another file"}) + "\n")
    (corpus / "nothing.jsonl").write_text("")
    many = "".join(json.dumps({"id": f"z{i}", "text": f"compressed record {i} of a file cut short"}) + "\n"
                   for i in range(1500)).encode()
    packed = gzip.compress(many)
    (corpus / "cut.jsonl.gz").write_bytes(packed[: len(packed) * 2 // 3])  # a download that stopped
    (corpus / "locked").mkdir()
    (corpus / "locked" / "secret.txt").write_text("a document in a folder nobody may list")
    (corpus / "locked").chmod(0)
    yield corpus
    (corpus / "locked").chmod(0o755)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_stage_ingest_quarantines_broken_files_and_loses_nothing(home, broken_corpus, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["stage", "ingest", "--input", str(broken_corpus), "--output", str(out),
                    "--set", "ingest.output_format=jsonl"], prefix=unprivileged())
    summary = last_json(proc.stdout)
    counts = summary["counts"]
    kept = _read_jsonl(out / "kept.jsonl")
    quarantined = _read_jsonl(out / "quarantined.jsonl")
    intact = [d for d in kept if d["id"].startswith("z")]
    assert 900 < len(intact) < 1500  # the records before the cut, kept
    assert [d["id"] for d in intact] == [f"z{i}" for i in range(len(intact))]
    assert counts == {"in": 15 + len(intact), "kept": 3 + len(intact), "removed": 0, "quarantined": 12}
    assert counts["in"] == len(kept) + len(quarantined) + len(_read_jsonl(out / "removed.jsonl"))
    assert sorted(d["id"] for d in kept if d not in intact) == ["r1", "user:html/apt.html", "user:notes.txt"]
    assert {d["id"]: d for d in kept}["r1"]["text"] == "first real record"  # the first r1 wins
    assert {d["id"]: d["source"] for d in kept}["r1"] == "mine"
    reasons = sorted(q["reason"] for q in quarantined)
    assert reasons == ["bad_encoding", "bad_json", "duplicate_id", "duplicate_id", "empty", "empty", "no_text",
                       "not_object", "too_large", "truncated", "unreadable", "unreadable"]
    assert all(q["detail"] and q["origin"] for q in quarantined)
    by_reason = {q["reason"]: q for q in quarantined}
    assert f"{broken_corpus / 'records.jsonl'} document 1" in by_reason["duplicate_id"]["detail"]
    cut = by_reason["truncated"]
    assert cut["origin"].endswith("cut.jsonl.gz") and "compressed byte" in cut["detail"]
    assert cut["line"] == len(intact) + 1
    locked = [q for q in quarantined if q["origin"] == str(broken_corpus / "locked")]
    assert locked and "cannot list folder" in locked[0]["detail"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["kept.jsonl"] == sha256_file(out / "kept.jsonl")
    files = {row["path"]: row for row in _read_jsonl(out / "files.jsonl")}
    assert files["nothing.jsonl"]["docs"] == 0 and files["nothing.jsonl"]["quarantined"] == 0
    assert manifest["details"]["files"]["empty"] == 1
    assert manifest["details"]["files"]["empty_listed"] == [str(broken_corpus / "nothing.jsonl")]
    assert files["then.jsonl"]["reasons"] == {"duplicate_id": 1} and files["then.jsonl"]["docs"] == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # manifest.json like its siblings
    assert summary["outputs"]["docs"] == str(out / "kept.jsonl")
    assert "Traceback" not in proc.stderr

    # python -m stages takes the same flags and gives byte-identical outputs
    out2 = tmp_path / "out2"
    proc2 = subprocess.run([*unprivileged(), sys.executable, "-m", "stages", "ingest", "--input", str(broken_corpus),
                            "--output",
                            str(out2), "--set", "ingest.output_format=jsonl"], capture_output=True, text=True,
                           cwd=REPO, env=os.environ.copy(), timeout=600)
    assert proc2.returncode == 0, proc2.stderr
    manifest2 = json.loads((out2 / "manifest.json").read_text())
    assert manifest2["outputs"] == manifest["outputs"]
    assert manifest2["cache_key"] == manifest["cache_key"]


def test_a_killed_stage_leaves_litter_that_the_next_run_and_gc_remove(home, broken_corpus, tmp_path):
    """SIGKILL a stage while its temp output exists: `gc --dry-run` lists it, the next run into the same
    output removes it; a second killed run's temp dir is removed by `gc` itself."""
    out = tmp_path / "out"

    def killed_run() -> Path:
        proc = subprocess.Popen([LMFORGE, "stage", "dedup", "--input", str(broken_corpus / "records.jsonl"),
                                 "--output", str(out)], cwd=REPO, env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, found = time.time() + 120, []
        while time.time() < deadline and not found and proc.poll() is None:
            found = [p for p in tmp_path.glob(".out.tmp-*") if p.is_dir() and Path(f"{p}.owner.json").exists()]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert found, "the stage finished or failed before its temp output was seen"
        return found[0]

    first = killed_run()
    listed = last_json(run_cli(["gc", "--dry-run"]).stdout)
    assert {"kind": "partial-output", "path": str(first)} in [{k: i[k] for k in ("kind", "path")}
                                                               for i in listed["items"]]
    run_cli(["stage", "dedup", "--input", str(broken_corpus / "records.jsonl"), "--output", str(out)])
    assert not first.exists() and (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []

    second = killed_run()
    done = last_json(run_cli(["gc"]).stdout)
    assert str(second) in [i["path"] for i in done["items"]] and not second.exists()
    assert (out / "manifest.json").exists()  # the finished output is not litter


def test_stage_with_a_missing_input_exits_2_in_one_line(home, tmp_path):
    proc = run_cli(["stage", "dedup", "--input", "/nonexistent", "--output", str(tmp_path / "o")], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        "error: input 'docs': /nonexistent does not exist"
    assert "Traceback" not in proc.stderr


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


def lmforge(*args: str):
    """`lmforge ARGS` in this process (typer's CliRunner): for --help and config errors, which start nothing."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "ingest.max_mb=1"], "unknown key 'ingest.max_mb'; allowed:"),
        (["--set", "ingest.output_format=xml"], "'ingest.output_format' ('xml')"),
        (["--set", "dedup.threshold=0.7"], "standalone 'ingest' takes 'ingest.<field>=...'"),
    ],
)
def test_stage_bad_config_exits_2_naming_the_field(home, tmp_path, args, needle):
    result = lmforge("stage", "ingest", "--output", str(tmp_path / "o"), *args)
    assert result.exit_code == 2 and needle in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert not (tmp_path / "o").exists()


def test_run_bad_config_and_unknown_stage_exit_2(home):
    result = lmforge("run", "--config", str(TINY), "--set", "pipeline.seed=abc")
    assert result.exit_code == 2 and "'pipeline.seed'" in result.stderr
    result = lmforge("run", "--config", str(TINY), "--until", "nosuchstage")
    assert result.exit_code == 2 and "unknown stage 'nosuchstage'" in result.stderr
    result = lmforge("stage", "nosuchstage", "--output", "/tmp/x")
    assert result.exit_code == 2 and "unknown stage 'nosuchstage'" in result.stderr


def test_help_explains_every_command():
    import re

    top = lmforge("--help")
    assert top.exit_code == 0
    listed = set(re.findall(r"^│ ([a-z][\w-]*)\s{2,}\S", top.stdout, re.M))  # the Commands panel's rows
    operations = {"rerun", "resume", "status", "cancel", "compare", "gc", "dashboard", "schedule", "schedules"}
    assert {"run", "stage", "config", "ui", "down", "serve", "rollback", "generate", *operations} <= listed
    for command in (["run"], ["stage"], ["config", "show"], ["config", "schema"], ["ui"], ["down"],
                    *[[c] for c in sorted(operations)]):
        result = lmforge(*command, "--help")
        assert result.exit_code == 0 and f"Usage: root {' '.join(command)} [OPTIONS]" in result.stdout
        docstring = result.stdout.split("[OPTIONS]", 1)[1].split("╭─", 1)[0]
        assert len(docstring.split()) >= 5, (command, docstring)  # says what the command does
    assert "--until" in lmforge("run", "--help").stdout


def test_config_schema_and_show(home):
    schema = json.loads(lmforge("config", "schema").stdout)
    assert {"pipeline", "engines", "ingest"} <= set(schema["properties"])
    shown = lmforge("config", "show", "--config", str(TINY), "--set", "ingest.task_mb=3").stdout
    assert "task_mb: 3" in shown and "name: tiny" in shown
