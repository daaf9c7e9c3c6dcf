"""`lmforge stage tokenize` on real documents: a loadable tokenizer, packed shards whose
tokens are exactly the documents' tokens, no document in both splits, mixture weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import last_json, real_documents, run_cli

pytestmark = pytest.mark.integration


def _write(path, docs):
    with open(path, "w", encoding="utf-8") as handle:
        for d in docs:
            handle.write(json.dumps(d, ensure_ascii=False) + "\n")


def _stream_counts(folder, split, vocab):
    from stages.tokenize.packed import PackedDataset

    data = PackedDataset(folder, split)
    counts = np.zeros(vocab, np.int64)
    for shard in data.shards:
        flat = np.asarray(shard.tokens).reshape(-1)[: shard.header.real_tokens]
        counts += np.bincount(flat, minlength=vocab)
        assert np.all(np.asarray(shard.tokens).reshape(-1)[shard.header.real_tokens:] == shard.header.pad_id)
    return data, counts


def test_standalone_tokenize_packs_exactly_the_documents(home, tmp_path):
    from transformers import AutoTokenizer

    from stages.tokenize.mixture import split_of

    docs = real_documents(["debian-handbook", "python-doc-rst", "fortunes-ru"], 8)
    for i, d in enumerate(docs):
        d["id"] = f"d{i}"
    path = tmp_path / "docs.jsonl"
    _write(path, docs)
    with open(path, "a") as handle:
        handle.write("not json\n")
    out = tmp_path / "out"
    proc = run_cli(["stage", "tokenize", "--input", str(path), "--output", str(out),
                    "--set", "tokenize.tokenizer.vocab_size=2000", "--set", "tokenize.seq_len=64",
                    "--set", "tokenize.validation_fraction=0.2", "--set", "tokenize.shard_docs=40",
                    "--set", "tokenize.mixture.fortunes-ru=2"])
    summary = last_json(proc.stdout)
    assert summary["counts"]["quarantined"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    seed = manifest["seed"]
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert len(tok) == 2000 and tok.eos_token == "<|end_of_text|>"

    expected = {"train": np.zeros(2000, np.int64), "val": np.zeros(2000, np.int64)}
    n_docs = {"train": 0, "val": 0}
    for d in docs:
        split = split_of(seed, d["id"], 0.2)
        ids = tok.encode(d["text"], add_special_tokens=False) + [tok.eos_token_id]
        weight = 2 if (split == "train" and d["source"] == "fortunes-ru") else 1
        expected[split] += weight * np.bincount(ids, minlength=2000)
        n_docs[split] += weight
    assert n_docs["val"] > 0 and n_docs["train"] > 0
    for split in ("train", "val"):
        data, counts = _stream_counts(out / "tokens", split, 2000)
        # the multiset of packed tokens is exactly that of the split's documents: nothing
        # lost, nothing duplicated, no document of the other split leaked in
        assert np.array_equal(counts, expected[split]), split
        assert sum(len(s.doc_ends) for s in data.shards) == n_docs[split]
        assert data.header.tokenizer_sha256 == manifest["details"]["tokenizer_sha256"]
    metrics = manifest["details"]
    assert metrics["packing_efficiency"] > 0.99
    assert set(metrics["token_share"]) == {d["source"] for d in docs}
    assert abs(sum(metrics["token_share"].values()) - 1) < 1e-9
    assert metrics["val_unigram_entropy_nats"] > 3


def test_an_existing_tokenizer_folder_is_used_instead_of_training(home, tmp_path):
    docs = real_documents(["python-doc-rst"], 4)
    path = tmp_path / "docs.jsonl"
    _write(path, docs)
    first = tmp_path / "first"
    run_cli(["stage", "tokenize", "--input", str(path), "--output", str(first),
             "--set", "tokenize.tokenizer.vocab_size=700", "--set", "tokenize.seq_len=32"])
    again = tmp_path / "again"
    run_cli(["stage", "tokenize", "--input", str(path), "--output", str(again), "--set", "tokenize.seq_len=32",
             "--set", f"tokenize.tokenizer.path={first / 'tokenizer'}"])
    a = json.loads((first / "manifest.json").read_text())["details"]
    b = json.loads((again / "manifest.json").read_text())
    assert a["tokenizer"] == "trained in this run" and b["details"]["tokenizer"].startswith("given:")
    assert b["details"]["tokenizer_sha256"] == a["tokenizer_sha256"] and b["details"]["vocab_size"] == 700
    assert b["inputs"]["tokenizer"]["digest"]  # the given folder's digest is part of the cache key
    assert b["details"]["tokens"] == a["tokens"]
