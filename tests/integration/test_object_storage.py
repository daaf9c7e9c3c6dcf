"""Work files on a real S3 server (SeaweedFS on 127.0.0.1): the storage layer's reads and atomic writes,
a bad storage setting refused in one line before any work, and the server stopped under a running stage
(a clear error naming the endpoint, no half-written output, a rerun that finishes once it is back, and
`lmforge gc` sweeping the work files the failed run left there, and the serving copy of a model whose run goes)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from pipelines import object_store as seaweedfs
from stages.core import names, partitioned, storage
from stages.core.contract import work_name
from stages.core.tracking import Tracker
from tests.conftest import LMFORGE, REPO, TINY, last_json, real_documents, run_cli

pytestmark = pytest.mark.integration


def test_storage_layer_on_seaweedfs(object_store, s3_env, monkeypatch, tmp_path):
    base = object_store.uri("layer")
    # lines survive chunk boundaries, also inside a multi-byte character
    lines = [json.dumps({"id": i, "text": "é€" * (i % 7) + "x" * i}, ensure_ascii=False) + "\n" for i in range(300)]
    storage.write_text(storage.join(base, "a.jsonl"), "".join(lines))
    monkeypatch.setattr(storage, "CHUNK", 7)
    with storage.open_text(storage.join(base, "a.jsonl")) as handle:
        assert list(handle) == lines
    # ranged reads, listing, and a failed write that leaves nothing (not even its temporary object)
    storage.write_bytes(storage.join(base, "b.bin"), bytes(range(256)))
    with storage.RangeReader(storage.join(base, "b.bin")) as reader:
        assert reader.read_at(10, 5) == bytes(range(10, 15))
    with pytest.raises(RuntimeError), storage.open_output(storage.join(base, "c.jsonl")) as handle:
        handle.write("half a file")
        raise RuntimeError("the writer dies")
    assert storage.list_tree(base) == [storage.join(base, "a.jsonl"), storage.join(base, "b.bin")]
    # a partitioned table (dedup's shuffle) with a ragged column, read back one partition at a time
    rows = np.arange(50, dtype=np.int64)
    ragged = [np.arange(i % 5, dtype=np.uint64) for i in range(50)]
    partitioned.write_table(partitioned.table_path(storage.join(base, "t"), "m0"), rows % 3, 3,
                            {"node": rows, "shingles": ragged})
    part = partitioned.read_partition_of_all(storage.join(base, "t"), 1)
    assert part["node"].tolist() == [n for n in range(50) if n % 3 == 1]
    assert [len(s) for s in part["shingles"]] == [n % 5 for n in range(50) if n % 3 == 1]
    # a driver's folder and file handed to workers (StageContext.for_workers) and fetched back where they run
    local = tmp_path / "model"
    (local / "adapter").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "adapter" / "weights.bin").write_bytes(bytes(range(200)))
    storage.upload_tree(local, storage.join(base, "for-workers", "model"))
    storage.upload_tree(local / "config.json", storage.join(base, "for-workers", "rows.jsonl"))
    copy = storage.fetched(storage.join(base, "for-workers", "model"))
    assert copy != local and (copy / "adapter" / "weights.bin").read_bytes() == bytes(range(200))
    assert storage.fetched(storage.join(base, "for-workers", "rows.jsonl")).read_text() == "{}"
    assert storage.fetched(storage.join(base, "for-workers", "model")) == copy  # fetched once per process
    assert storage.fetched(str(local)) == local
    storage.remove_tree(base)
    assert storage.list_tree(base) == []
    with pytest.raises(storage.StorageError, match=object_store.endpoint):
        storage.read_bytes(storage.join(base, "a.jsonl"))


def _docs(tmp_path, count: int) -> str:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in real_documents(["linux-doc", "python-doc-rst"], count)))
    return str(path)


def test_wrong_credentials_or_missing_bucket_fail_in_one_line_before_any_work(home, tmp_path, object_store):
    docs = _docs(tmp_path, 20)
    cases = [({**object_store.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, object_store.uri("x"),
              "credentials were refused"),
             (object_store.env(), "s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist")]
    for env, uri, why in cases:
        out = tmp_path / "out"
        proc = run_cli(["stage", "dedup", "--input", docs, "--output", str(out), "--storage", uri], env=env,
                       check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and why in errors[0] and object_store.endpoint in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    # the pipeline checks before it starts Prefect or any stage
    proc = run_cli(["run", "--config", str(TINY), "--set", "engines.storage=s3://no-such-bucket/runs"],
                   env=object_store.env(), check=False)
    assert proc.returncode == 2 and "bucket 'no-such-bucket' does not exist" in proc.stderr, proc.stderr[-2000:]
    assert not (home / "work").exists() and not (home / "prefect").exists()


def test_storage_stopped_mid_stage_fails_cleanly_and_a_rerun_finishes(home, tmp_path, tmp_path_factory):
    store = seaweedfs.start(tmp_path_factory.mktemp("seaweedfs-stopped"))
    try:
        env = {**store.env()}
        docs = _docs(tmp_path, 400)
        out = tmp_path / "out"
        args = [LMFORGE, "stage", "dedup", "--input", docs, "--output", str(out), "--storage", store.uri("run"),
                "--set", "dedup.shard_docs=40"]
        proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            deadline = time.time() + 120
            while time.time() < deadline and not storage.list_tree(store.uri("run/work")):
                time.sleep(0.05)
            assert storage.list_tree(store.uri("run/work")), "the stage never wrote a work file"
        store.stop()  # mid-stage: its shards are being written or read
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and store.endpoint in errors[0], stderr[-3000:]
        assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written

        store = seaweedfs.start(store.folder, s3_port=store.s3_port)  # back, on the same endpoint
        proc = run_cli(args[1:], env=env)
        counts = last_json(proc.stdout)["counts"]
        lines = len(open(docs).read().splitlines())
        assert counts["in"] == lines and counts["kept"] + counts["removed"] + counts["quarantined"] == lines
        assert (out / "kept.jsonl").exists() and (out / "manifest.json").exists()

        # the failed run's work files stayed (the store was down when it failed): `lmforge gc` removes them, and
        # leaves the work folder of a stage whose process still runs on this host (this one's)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            # (SeaweedFS drops an emptied folder's name a little later: the finished run's may still be listed)
            litter = [d for d in storage.list_dirs(store.uri("run/work/dedup")) if storage.list_tree(d)]
            assert len(litter) == 1, litter
            running = storage.join(store.uri("run/work/dedup"), work_name(None))
            storage.write_text(storage.join(running, "shard-00000.jsonl"), "{}\n")
            # a served model's copy goes with the stage run that made it (gc deletes that run: no pipeline needs
            # it); a copy named by its files' digest (`lmforge serve` of a folder) stays
            tracker = Tracker("tiny")
            old_run = tracker.start_run("quantize", {names.TAG_STAGE: "quantize", names.TAG_CACHE_KEY: "k" * 64})
            tracker.client.set_terminated(old_run, "FINISHED")
            for key in (old_run, "digest-0123"):
                storage.write_text(storage.join(store.uri("run/serve"), key, "config.json"), "{}")
            done = last_json(run_cli(["gc"], env={**env, "LMFORGE_STORAGE": store.uri("run")}).stdout)
            swept = {i["path"]: i for i in done["items"] if str(i["path"]).startswith("s3://")}
            assert swept[litter[0]]["kind"] == "work-dir" and swept[litter[0]]["bytes"] > 0 and running not in swept
            assert storage.list_tree(store.uri("run/work")) == [storage.join(running, "shard-00000.jsonl")]
            assert swept[storage.join(store.uri("run/serve"), old_run)]["kind"] == "serve-copy"
            assert old_run in done["removed_runs"]
            assert storage.list_tree(store.uri("run/serve")) == [store.uri("run/serve/digest-0123/config.json")]
    finally:
        store.stop()
