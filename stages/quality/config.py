"""quality's config: PII, language keep-list, heuristic thresholds, the classifier."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig
from stages.quality.heuristics import FILTERS


class LabelRule(StrictModel):
    """Documents matching source (+ path glob, + language prefix) get a label and a split."""

    source: str
    path: str = "**"
    lang: Optional[str] = None
    label: Literal["hq", "lq"]
    split: Literal["train", "test", "file"]


# Which real sources are good and bad examples, and why (README "quality"): hq = edited
# prose written for people (Python docs, Gutenberg books, the English Debian handbook,
# Wikipedia); lq = machine-like text a language model should see little of (sysfs ABI
# listings, devicetree YAML schemas). split "file" puts a fifth of the files (by a hash
# of source and path) in the test split, so test documents come from files never seen
# in training; Wikipedia is test-only, a source never seen in training.
DEFAULT_RULES = [
    LabelRule(source="python-doc", label="hq", split="file"),
    LabelRule(source="gutenberg", label="hq", split="file"),
    LabelRule(source="debian-handbook", lang="en", label="hq", split="file"),
    LabelRule(source="wikipedia-en", label="hq", split="test"),
    LabelRule(source="linux-doc", path="ABI/**", label="lq", split="file"),
    LabelRule(source="linux-doc", path="**/*.yaml.gz", label="lq", split="file"),
]


class ClassifierConfig(StrictModel):
    mode: Literal["auto", "train", "registered", "none"] = Field(
        "auto", description="auto: train inside the pipeline; standalone use lmforge-<cfg>-quality@latest if registered.")
    rules: list[LabelRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    max_chars: int = Field(3000, gt=0, description="Head of each document the classifier reads.")
    epoch: int = Field(10, ge=1)
    lr: float = Field(0.2, gt=0)
    dim: int = Field(32, ge=2)
    word_ngrams: int = Field(2, ge=1)
    bucket: int = Field(200_000, ge=1000, description="Hash buckets for n-grams: small keeps the model small.")
    seed: int = Field(0, description="fastText seed; training is single-threaded so it is reproducible.")
    min_examples: int = Field(20, ge=1, description="Fewest documents per label in each split to train.")
    keep_threshold: float = Field(0.1, ge=0, le=1, description="Documents scoring below are removed.")
    quantize: bool = Field(True, description="Product-quantize the model (.ftz-style): ~1 MB instead of ~30 MB.")


class QualityConfig(StageConfig):
    pii: bool = Field(True, description="Replace e-mail and public IP addresses with placeholders.")
    languages: list[str] = Field(default_factory=list, description="Keep-list of ISO codes; [] keeps all (tags all).")
    min_lang_score: float = Field(0.0, ge=0, le=1, description="Remove documents whose language score is lower.")
    langid_model: Optional[str] = Field(None, description="fastText lid.176.ftz to detect languages with; null = the "
                                                          "one infra/fetch_data.sh unpacked into the data dir.")
    filters: list[str] = Field(
        default_factory=lambda: [name for name in FILTERS if name != "curly_brace"],
        description="Heuristic filters to apply, in order (curly_brace is off: the corpus is technical docs).")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {name: f.default for name, f in FILTERS.items()},
        description="Threshold of each filter (published defaults).")
    no_space_languages: list[str] = Field(
        default_factory=lambda: ["zh", "ja", "ko", "th", "my", "km", "lo", "bo", "wuu", "yue"],
        description="Languages written without spaces: word-based filters are skipped for them.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    shard_docs: int = Field(4000, ge=1, description="Documents per Ray task.")
    task_cpus: float = Field(1.0, gt=0, le=64)
    max_doc_chars: int = Field(8_000_000, gt=0)
    output_format: Literal["jsonl", "parquet"] = "jsonl"

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; allowed: {', '.join(FILTERS)}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _all_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [k for k in value if k not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; allowed: {', '.join(FILTERS)}")
        return {**{name: f.default for name, f in FILTERS.items()}, **value}
