"""dedup through `lmforge stage dedup` (the standalone contract), against the in-process
core, byte-identical reruns, and a Ray worker killed mid-signatures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import psutil
import pytest

from stages.dedup.config import DedupConfig
from stages.dedup.core import REASONS, dedup_documents
from tests.conftest import last_json, real_documents, run_cli

pytestmark = pytest.mark.integration


def _planted_corpus(tmp_path):
    docs = [d for d in real_documents(["linux-doc"], 120) if len(d["text"].split()) >= 200][:100]
    assert len(docs) >= 60
    lines = [json.dumps({"id": d["id"], "text": d["text"], "source": d["source"], "extra": {"n": i}})
             for i, d in enumerate(docs)]
    planted = {}
    for i, d in enumerate(docs[:20]):
        words = d["text"].split(" ")
        kind = ("exact", "near")[i % 2]
        text = d["text"].upper() if kind == "exact" else " ".join(w for j, w in enumerate(words) if j % 50 != 7)
        lines.append(json.dumps({"id": f"zz-copy-{i:02d}", "text": text, "source": "planted"}))
        planted[f"zz-copy-{i:02d}"] = (kind, d["id"])
    broken = [
        "this line is not json",
        json.dumps({"id": "no-text"}),
        json.dumps({"id": docs[3]["id"], "text": REUSED}),  # an id used again, shards later
        json.dumps({"id": "number-text", "text": 12}),
        json.dumps({"id": "huge", "text": "x " * 10_500_000}),
    ]
    path = tmp_path / "docs.jsonl"
    with open(path, "wb") as handle:
        for line in lines[:50] + broken[:2] + lines[50:] + broken[2:]:
            handle.write(line.encode() + b"\n")
        handle.write(b'{"id": "bad-utf8", "text": "\xff\xfe oops"}\n')
    return path, planted, len(lines), 6


REUSED = "another text under an id that an earlier record already used"


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_standalone_dedup_contract(home, tmp_path, object_store, s3_env):
    path, planted, valid, broken = _planted_corpus(tmp_path)
    out = tmp_path / "out"
    proc = run_cli(["stage", "dedup", "--input", str(path), "--output", str(out),
                    "--set", "dedup.shard_docs=37", "--set", "dedup.boilerplate_min_docs=5"])
    summary = last_json(proc.stdout)
    kept, removed, quarantined = (_jsonl(out / f) for f in ("kept.jsonl", "removed.jsonl", "quarantined.jsonl"))
    assert summary["counts"] == {"in": valid + broken, "kept": len(kept), "removed": len(removed),
                                 "quarantined": broken}
    assert sorted(q["reason"] for q in quarantined) == ["bad_encoding", "bad_json", "bad_text_type", "duplicate_id",
                                                        "no_text", "too_large"]
    reused = [q for q in quarantined if q["reason"] == "duplicate_id"][0]
    assert f"{path} record 4" in reused["detail"] and reused["origin"].startswith(str(path))
    ids = [d["id"] for d in kept] + [d["id"] for d in removed]
    assert len(ids) == len(set(ids)) == valid  # every valid record exactly once
    by_id = {d["id"]: d for d in removed}
    for copy, (kind, original) in planted.items():
        assert by_id[copy]["reason"] == kind, copy
        assert by_id[copy]["duplicate_of"] == original and by_id[copy]["cluster_id"] == original
    for record in removed:
        assert {"id", "reason", "filter", "value", "duplicate_of", "cluster_id", "text"} <= set(record)
        assert record["filter"] == f"dedup.{record['reason']}"
    assert all(d["extra"]["n"] >= 0 for d in kept if "extra" in d)  # every field kept
    assert all("boilerplate_chars" in d for d in kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "dedup_clusters.png").stat().st_size > 5000
    assert manifest["metrics"]["near_removed"] >= 10 and manifest["metrics"]["exact_removed"] >= 10

    # the Ray stage decides exactly what the in-process core decides
    valid_docs = [json.loads(line) for line in path.read_bytes().splitlines()
                  if line.startswith(b"{") and b'"text": "' in line and b"\xff" not in line and len(line) < 10**6
                  and REUSED.encode() not in line]
    core = dedup_documents(valid_docs, DedupConfig(boilerplate_min_docs=5))
    expected = {d["id"]: REASONS.get(int(s), "kept") for d, s in zip(valid_docs, core.status)}
    actual = {**{d["id"]: "kept" for d in kept}, **{d["id"]: d["reason"] for d in removed}}
    assert actual == expected
    # ... and links every removed document to the same duplicate and cluster, with the same cluster sizes
    ids = [d["id"] for d in valid_docs]
    for record in removed:
        i = ids.index(record["id"])
        dup = int(core.duplicate_of[i])
        assert (record["duplicate_of"], record["cluster_id"]) == (ids[dup] if dup >= 0 else None, ids[core.cluster[i]])
    sizes = np.bincount(core.cluster, minlength=len(ids))
    assert {d["id"]: d["dup_cluster_size"] for d in kept} == {d["id"]: int(sizes[ids.index(d["id"])]) for d in kept}
    assert manifest["details"]["cluster_size_histogram"] == \
        {str(k): v for k, v in sorted(Counter(int(s) for s in sizes[sizes > 0]).items())}

    # same input and config, with the work files (shards, shuffles, parts) on S3: byte-identical outputs,
    # and no work file left behind
    from stages.core import storage

    out2 = tmp_path / "out2"
    run_cli(["stage", "dedup", "--input", str(path), "--output", str(out2), "--storage", object_store.uri("ci"),
             "--set", "dedup.shard_docs=37", "--set", "dedup.boilerplate_min_docs=5"])
    again = json.loads((out2 / "manifest.json").read_text())
    assert {k: v for k, v in again["outputs"].items() if not k.endswith(".png")} == \
        {k: v for k, v in manifest["outputs"].items() if not k.endswith(".png")}
    assert storage.list_tree(object_store.uri("ci")) == []


def _kill_first_signature_worker(stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::dedup_signatures"):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
        time.sleep(0.005)


def test_killed_signature_worker_is_retried_and_output_is_unchanged(home, tmp_path):
    import ray
    from ray.util.state import list_tasks

    from stages.core.runner import execute_stage, input_from_path
    from stages.dedup.stage import DedupStage

    docs = real_documents(["linux-doc", "python-doc-rst"], 500)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = DedupConfig(shard_docs=120)
    # the state API is served by Ray's dashboard process (lmforge's own init leaves it off)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    try:
        calm = execute_stage(DedupStage(), cfg, {"docs": input_from_path("docs", path)}, tmp_path / "calm")
        stop, killed = threading.Event(), []
        watcher = threading.Thread(target=_kill_first_signature_worker, args=(stop, killed), daemon=True)
        watcher.start()
        disturbed = execute_stage(DedupStage(), cfg, {"docs": input_from_path("docs", path)}, tmp_path / "killed")
        stop.set()
        watcher.join()
        assert killed, "no signature task was caught running"
        attempts = list_tasks(filters=[("name", "=", "dedup_signatures")], detail=True, limit=10_000)
        assert any(t["attempt_number"] >= 1 for t in attempts), attempts
        assert any(t["state"] == "FAILED" for t in attempts)
    finally:
        ray.shutdown()

    def strip(m):
        return {k: v for k, v in m["outputs"].items() if not k.endswith(".png")}

    assert strip(disturbed.manifest) == strip(calm.manifest)
    assert disturbed.counts == calm.counts and calm.counts["in"] == len(docs) and calm.counts["kept"] > 0
