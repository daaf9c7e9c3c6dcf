"""dedup's config. Defaults chosen on bench/dedup_bench.py (see bench/README.md)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from stages.core.contract import StageConfig


class DedupConfig(StageConfig):
    exact: bool = Field(True, description="Drop copies equal after NFKC, case, punctuation and whitespace folding.")
    boilerplate: bool = Field(True, description="Strip units that recur across many documents before near-dedup.")
    boilerplate_unit: Literal["line", "paragraph"] = Field("line", description="What a boilerplate unit is.")
    boilerplate_min_docs: int = Field(50, ge=2, description="A unit in at least this many documents is boilerplate.")
    boilerplate_min_chars: int = Field(15, ge=1, description="Shorter units are never judged boilerplate.")
    near: bool = Field(True, description="MinHash LSH near-duplicate removal.")
    shingle_unit: Literal["word", "char"] = Field("word", description="Shingles are word or character n-grams.")
    shingle_size: int = Field(3, ge=1, le=32, description="n of the n-gram shingles.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    threshold: float = Field(0.6, gt=0, lt=1, description="Jaccard similarity that makes a near duplicate.")
    bands: Optional[int] = Field(None, ge=1, description=(
        "LSH bands; null = derived from threshold and verify (datasketch's optimizer, misses weighed 0.9 when "
        "candidates are verified, else 0.5)."))
    rows: Optional[int] = Field(None, ge=1, description="LSH rows per band; set together with bands.")
    verify: bool = Field(True, description="Check candidate pairs' exact shingle Jaccard and drop false positives.")
    minhash_seed: int = Field(1, description="Seed of the MinHash permutations.")
    max_bucket: int = Field(50, ge=2, description="Buckets larger than this are linked as a star, not all pairs.")
    shard_docs: int = Field(4000, ge=1, description="Documents per Ray task.")
    partitions: Optional[int] = Field(None, ge=1, le=4096, description=(
        "Partitions of the shuffles between passes (LSH buckets, exact keys, duplicate-graph edges); "
        "null = one per shard, at most 256."))
    task_cpus: float = Field(1.0, gt=0, le=64, description="num_cpus of each Ray task.")
    max_doc_chars: int = Field(8_000_000, gt=0, description="Longer texts are quarantined as too_large.")
    output_format: Literal["jsonl", "parquet"] = Field("jsonl", description="kept.jsonl, or kept/part-*.parquet.")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> "DedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then the threshold decides)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows  # type: ignore[return-value]
        from stages.dedup.minhash import lsh_params

        return lsh_params(self.threshold, self.num_perm, verified=self.verify)
