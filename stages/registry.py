"""Stage names, their order in the DAG, and where each implementation lives.

Adding a stage: its module under ``stages/`` and one line in ``_IMPLEMENTATIONS``.
"""

from __future__ import annotations

import importlib

from stages.core.contract import Stage
from stages.core.errors import ConfigError

# DESIGN.md's DAG, in run order. dpo replaces reward+ppo when chosen.
STAGE_ORDER = (
    "ingest", "dedup", "quality", "tokenize", "pretrain", "align_data",
    "sft", "reward", "ppo", "dpo", "quantize", "deploy",
)

_IMPLEMENTATIONS = {
    "ingest": "stages.ingest.stage:IngestStage",
    "dedup": "stages.dedup.stage:DedupStage",
    "quality": "stages.quality.stage:QualityStage",
    "tokenize": "stages.tokenize.stage:TokenizeStage",
    "pretrain": "stages.pretrain.stage:PretrainStage",
    "align_data": "stages.align_data.stage:AlignDataStage",
    "sft": "stages.sft.stage:SFTStage",
    "reward": "stages.reward.stage:RewardStage",
    "ppo": "stages.ppo.stage:PPOStage",
    "dpo": "stages.dpo.stage:DPOStage",
    "quantize": "stages.quantize.stage:QuantizeStage",
    "deploy": "stages.deploy.stage:DeployStage",
}


def implemented() -> list[str]:
    return [name for name in STAGE_ORDER if name in _IMPLEMENTATIONS]


def get_stage(name: str) -> Stage:
    if name not in _IMPLEMENTATIONS:
        known = ", ".join(implemented())
        if name in STAGE_ORDER:
            raise ConfigError(f"stage '{name}' is not implemented yet; available: {known}")
        raise ConfigError(f"unknown stage '{name}'; allowed: {known}")
    module, _, cls = _IMPLEMENTATIONS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
