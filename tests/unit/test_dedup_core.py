"""dedup's core functions on small real inputs: normalization, boilerplate, MinHash
compatibility with datasketch, LSH candidates, clustering and representatives."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from stages.dedup import boilerplate as bp
from stages.dedup.cluster import candidate_pairs, clusters, jaccard, representatives
from stages.dedup.config import DedupConfig
from stages.dedup.core import EXACT, KEPT, NEAR, BOILERPLATE, dedup_documents
from stages.dedup.minhash import ShingleHasher, band_keys, lsh_params, signatures, to_lean_minhash
from stages.dedup.normalize import exact_key, normalize
from stages.core.errors import ConfigError
from stages.core.configuration import validate

PARAGRAPH = (
    "The kernel's command-line parameters are given as a space-separated list of strings. Most of them "
    "configure drivers or subsystems at boot time, and the ones a module does not recognize are passed "
    "on to init. Some options may also be changed later through sysfs, but only where the driver says so. "
    "This document lists the parameters that the generic code understands, grouped by subsystem, with the "
    "values each accepts and what happens when a value is out of range or missing altogether."
)
OTHER = (
    "A fortune is a short quotation printed at login. Debian ships collections in many languages, each a "
    "plain text file in which the entries are separated by a line holding a single percent sign, which the "
    "strfile program indexes so that a random entry can be found quickly without reading the whole file."
)


def test_normalize_folds_case_space_punctuation_and_compatibility_forms():
    assert normalize("  Hello,\tWORLD!!  It's\n\nfine… ") == "hello world its fine"
    assert normalize("ﬁne Ｔｅｘｔ") == "fine text"  # NFKC: ligature and full-width forms
    assert exact_key("Don't STOP.") == exact_key("dont stop") != exact_key("do not stop")


def test_boilerplate_units_are_counted_once_per_document_and_stripped():
    header = "Python 3.11.2 Documentation » The Python Standard Library"
    docs = [f"{header}\nbody number {i} is different from every other one\n{header}" for i in range(4)]
    keys, counts = bp.count_units(bp.document_unit_keys(d, "line", 15) for d in docs)
    assert dict(zip(keys.tolist(), counts.tolist()))[bp.unit_key(header, 15)] == 4
    boiler = np.sort(keys[counts >= 3])
    stripped, removed = bp.strip_boilerplate(docs[0], boiler, "line", 15)
    assert stripped == "body number 0 is different from every other one"
    assert removed == len(docs[0]) - len(stripped)
    assert bp.strip_boilerplate("short\nlines", boiler, "line", 15) == ("short\nlines", 0)
    assert "".join(bp.split_units("a\n\nb\n \nc", "paragraph")) == "a\n\nb\n \nc"


@pytest.mark.parametrize(("unit", "size"), [("word", 3), ("word", 5), ("char", 5)])
def test_vectorized_signatures_equal_datasketch_minhash(unit, size):
    hasher = ShingleHasher(unit, size)
    texts = [normalize(PARAGRAPH), normalize(OTHER), "tiny"]
    sig = signatures([hasher.hashes(t) for t in texts], 128, seed=7)
    for row, text in zip(sig, texts):
        m = MinHash(num_perm=128, seed=7, hashfunc=hasher.shingle_hash32, scheme="affine32")
        m.update_batch(hasher.shingles(text))
        assert np.array_equal(m.hashvalues, row)
    # and the rows work as datasketch objects: LSH and Jaccard estimates
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    lsh.insert("a", to_lean_minhash(sig[0], 7))
    assert lsh.query(to_lean_minhash(sig[0], 7)) == ["a"]
    assert to_lean_minhash(sig[0], 7).jaccard(to_lean_minhash(sig[1], 7)) < 0.2


def test_signature_jaccard_estimate_tracks_exact_jaccard():
    hasher = ShingleHasher("word", 3)
    words = normalize(PARAGRAPH).split()
    edited = words[:40] + ["inserted"] + words[40:70] + words[72:]
    a, b = normalize(PARAGRAPH), " ".join(edited)
    exact = jaccard(np.unique(hasher.hashes(a)), np.unique(hasher.hashes(b)))
    sig = signatures([hasher.hashes(a), hasher.hashes(b)], 256, seed=1)
    estimate = float(np.mean(sig[0] == sig[1]))
    assert 0.6 < exact < 0.95 and abs(estimate - exact) < 0.1


def test_lsh_params_and_band_keys():
    bands, rows = lsh_params(0.6, 128)
    assert bands * rows <= 128 and bands > 1
    sig = np.vstack([np.arange(128, dtype=np.uint32)] * 2 + [np.arange(128, dtype=np.uint32)[::-1]])
    keys = band_keys(sig, bands, rows)
    assert keys.shape == (3, bands) and np.array_equal(keys[0], keys[1]) and not np.any(keys[0] == keys[2])


def test_verified_candidates_let_lsh_trade_false_positives_for_recall():
    def found(similarity, bands, rows):  # the LSH formula: a pair shares at least one band
        return 1 - (1 - similarity ** rows) ** bands

    plain, verified = lsh_params(0.6, 128), lsh_params(0.6, 128, verified=True)
    assert plain == (18, 7) and verified[0] * verified[1] <= 128
    assert found(0.7, *verified) > 0.98 > 0.9 > found(0.7, *plain)
    assert DedupConfig().lsh() == verified and DedupConfig(verify=False).lsh() == plain


def test_candidate_pairs_from_buckets():
    keys = np.array([[1, 9], [1, 8], [2, 8], [3, 7]], dtype=np.uint64)
    pairs = candidate_pairs(keys, np.array([10, 11, 12, 13]))
    assert pairs.tolist() == [[10, 11], [11, 12]]
    big = np.zeros((60, 1), dtype=np.uint64)
    star = candidate_pairs(big, np.arange(60), max_bucket=50)
    assert len(star) == 59 and set(star[:, 0].tolist()) == {0}


def test_clusters_of_a_known_graph_and_deterministic_representatives():
    roots = clusters(7, np.array([[0, 1], [1, 2], [4, 5]]))
    groups = {}
    for i, r in enumerate(roots):
        groups.setdefault(r, []).append(i)
    assert sorted(groups.values()) == [[0, 1, 2], [3], [4, 5], [6]]
    lengths = np.array([10, 30, 30, 5, 7, 7, 1])
    reps = representatives(roots, lengths, ["c", "b", "a", "d", "f", "e", "g"])
    assert reps.tolist() == [2, 2, 2, 3, 5, 5, 6]  # longest, then smallest id


def _copy_with_edits(text: str, every: int) -> str:
    words = text.split(" ")
    return " ".join(w for i, w in enumerate(words) if i % every != 5)


def test_dedup_documents_end_to_end():
    base = PARAGRAPH + " " + PARAGRAPH.replace("kernel", "system")  # ~150 words
    docs = [
        {"id": "a-orig", "text": base},
        {"id": "b-case", "text": base.upper()},  # same length: the smaller id stays
        {"id": "c-edited", "text": _copy_with_edits(base, 40)},  # ~2.5% of words deleted
        {"id": "d-different", "text": OTHER + " " + OTHER.replace("fortune", "quote")},
        {"id": "e-half", "text": " ".join(base.split(" ")[:75]) + " " + " ".join(OTHER.split(" ")[:60])},
    ]
    result = dedup_documents(docs, DedupConfig(boilerplate_min_docs=2))
    status = dict(zip([d["id"] for d in docs], result.status.tolist()))
    assert status == {"a-orig": KEPT, "b-case": EXACT, "c-edited": NEAR, "d-different": KEPT, "e-half": KEPT}
    assert result.duplicate_of[1] == 0 and result.duplicate_of[2] == 0
    assert result.cluster.tolist()[:3] == [0, 0, 0]
    assert 0.6 <= result.value[2] < 1.0


def test_a_document_that_is_all_boilerplate_is_removed_as_such():
    chrome = ["Home | Docs | Blog | Contact us today", "Copyright 2024 Example Corp, all rights reserved"]
    docs = [{"id": f"p{i}", "text": f"{chrome[0]}\n{OTHER if i == 0 else PARAGRAPH} variant {i}\n{chrome[1]}"}
            for i in range(3)]
    docs.append({"id": "empty", "text": "\n".join(chrome)})
    result = dedup_documents(docs, DedupConfig(boilerplate_min_docs=3, near=False))
    assert result.status.tolist() == [KEPT, KEPT, KEPT, BOILERPLATE]
    assert result.stats["stripped"][0].startswith("A fortune") and "Copyright" not in result.stats["stripped"][0]


def test_bands_and_rows_validation():
    from stages.dedup.config import DedupConfig as C

    with pytest.raises(ConfigError, match="set both bands and rows"):
        validate(C, {"bands": 4}, prefix="dedup.")
    with pytest.raises(ConfigError, match="exceeds num_perm"):
        validate(C, {"bands": 20, "rows": 10}, prefix="dedup.")
    assert C(bands=16, rows=8).lsh() == (16, 8)


def _components_by_rounds(n, a, b, partitions, tmp_path):
    from stages.core.partitioned import read_partition_of_all
    from stages.dedup.components import connected_components, labels, write_edges

    half = len(a) // 2
    write_edges(tmp_path / "edges" / "x.part", a[:half], b[:half], partitions)
    write_edges(tmp_path / "edges" / "y.part", a[half:], b[half:], partitions)
    star, rounds = connected_components(tmp_path / "edges", tmp_path, partitions,
                                        lambda label, fn, args: [fn(*x) for x in args])
    found = {}
    for p in range(partitions):
        table = read_partition_of_all(star, p)
        if table:
            nodes, roots = labels(table["u"], table["v"])
            found.update(zip(nodes.tolist(), roots.tolist()))
    return found, rounds


@pytest.mark.parametrize("seed", range(6))
def test_star_rounds_find_the_components_union_find_finds(seed, tmp_path):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    a, b = rng.integers(0, n, 2 * n), rng.integers(0, n, 2 * n)
    if seed % 2:  # long chains, the star rounds' slowest case
        a, b = np.arange(n - 1), np.arange(1, n)
    a, b = a[a != b], b[a != b]
    found, rounds = _components_by_rounds(n, a, b, int(rng.integers(1, 6)), tmp_path)
    roots = clusters(n, np.stack([a, b], axis=1))
    smallest = {}
    for i in range(n):
        smallest.setdefault(int(roots[i]), i)
    assert found == {i: smallest[int(roots[i])] for i in set(a.tolist()) | set(b.tolist())}
    assert rounds >= 2


def test_partitioned_table_reads_back_each_partition(tmp_path):
    from stages.core.partitioned import read_partition, read_partition_of_all, write_table

    path = tmp_path / "t" / "m0.part"
    write_table(path, np.array([2, 0, 2, 1]), 3, {"id": np.array([b"a", b"bb", b"c", b"dddd"]),
                                                  "bits": [np.arange(3), np.arange(0), np.arange(2), np.arange(5)]})
    assert read_partition(path, 0)["id"].tolist() == [b"bb"]
    two = read_partition(path, 2)
    assert two["id"].tolist() == [b"a", b"c"] and [x.tolist() for x in two["bits"]] == [[0, 1, 2], [0, 1]]
    write_table(tmp_path / "t" / "m1.part", np.array([2]), 3, {"id": np.array([b"zzzzzz"]), "bits": [np.arange(1)]})
    assert read_partition_of_all(tmp_path / "t", 2)["id"].tolist() == [b"a", b"c", b"zzzzzz"]
    assert read_partition_of_all(tmp_path / "missing", 0) == {}
