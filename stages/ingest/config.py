"""ingest's config: which sources, how much of them, and the limits on a document."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.core.contract import StageConfig
from stages.ingest.sources import DEMO_SOURCES


class IngestConfig(StageConfig):
    sources: list[str] = Field(
        default_factory=lambda: list(DEMO_SOURCES),
        description="Demo corpus sources to read (fetched by infra/fetch_data.sh); [] for none.",
    )
    paths: list[str] = Field(
        default_factory=list,
        description="Your own corpus: local files, folders, globs or fsspec URLs of JSONL, Parquet, text or HTML.",
    )
    data_dir: str | None = Field(None, description="Fetched corpus folder; default $LMFORGE_DATA_DIR or .lmforge/data.")
    max_mb_per_source: float | None = Field(
        None, gt=0, description="Raw-byte budget per demo source (files taken in seeded random order); null = all."
    )
    max_files_per_source: int | None = Field(None, gt=0, description="File cap per demo source; null = all.")
    source_mb: dict[str, float] = Field(
        default_factory=dict, description="Per-source raw-byte budget overriding max_mb_per_source."
    )
    max_doc_chars: int = Field(8_000_000, gt=0, description="Longer documents are quarantined as too_large.")
    max_file_mb: float = Field(256.0, gt=0, description="Larger files are quarantined unread.")
    output_format: Literal["parquet", "jsonl"] = Field(
        "parquet", description="parquet: kept/part-NNNNN.parquet shards; jsonl: kept.jsonl."
    )
    task_mb: float = Field(8.0, gt=0, description="Raw MB of files per Ray extraction task (one output shard each).")
    task_cpus: float = Field(1.0, gt=0, le=64, description="num_cpus of each Ray extraction task.")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in DEMO_SOURCES]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; allowed: {', '.join(DEMO_SOURCES)}")
        return value

    @field_validator("source_mb")
    @classmethod
    def _known_source_budgets(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [name for name in value if name not in DEMO_SOURCES]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; allowed: {', '.join(DEMO_SOURCES)}")
        return value
