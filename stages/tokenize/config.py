"""tokenize's config: the tokenizer (trained or given), packing, split and mixture."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from stages.core.configuration import StrictModel
from stages.core.contract import StageConfig


class TokenizerConfig(StrictModel):
    path: Optional[str] = Field(
        None, description="An existing Hugging Face tokenizer folder to use instead of training one.")
    vocab_size: int = Field(8192, ge=300, le=262_144, description="BPE vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Fewest occurrences for a merge.")
    train_mb: float = Field(16.0, gt=0, description="MB of training-split text the BPE trainer reads (a seeded sample).")


class TokenizeConfig(StageConfig):
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_len: int = Field(256, ge=8, le=131_072, description="Tokens per packed training sequence.")
    validation_fraction: float = Field(
        0.02, ge=0, lt=1, description="Share of documents (by a seeded hash of the id) held out for validation.")
    mixture: dict[str, float] = Field(
        default_factory=dict,
        description="Per-source weight for the train split: 2 repeats a source twice, 0.5 keeps half of its "
                    "documents, 0 drops it; unlisted sources weigh 1.")
    num_actors: Optional[int] = Field(None, ge=1, description="Tokenizer actors; default one per CPU.")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs each tokenizer actor reserves.")
    shard_docs: int = Field(500, ge=1, description="Documents per work shard (one actor call each); small shards "
                                                   "balance the actors.")
    batch_docs: int = Field(256, ge=1, description="Documents per encode_batch call.")
    max_doc_chars: int = Field(10_000_000, ge=1, description="Longer documents are quarantined (too_large).")
