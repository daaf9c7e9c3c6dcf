"""The pipeline config: ``pipeline`` and ``engines`` sections plus one section per stage.

Loaded from YAML, overridden with ``--set section.field=value``, validated with models
that forbid unknown keys; errors name the field and what is allowed (exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from stages.core.configuration import StrictModel, apply_overrides, load_yaml, validate
from stages.core.errors import ConfigError
from stages.align_data.config import AlignDataConfig
from stages.dedup.config import DedupConfig
from stages.ingest.config import IngestConfig
from stages.quality.config import QualityConfig
from stages.pretrain.config import PretrainConfig
from stages.dpo.config import DPOConfig
from stages.quantize.config import QuantizeConfig
from stages.deploy.config import DeployConfig
from stages.ppo.config import PPOConfig
from stages.reward.config import RewardConfig
from stages.sft.config import SFTConfig
from stages.tokenize.config import TokenizeConfig

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


class PipelineSection(StrictModel):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Config name: the MLflow experiment and the registered-model prefix lmforge-<name>-*.")
    seed: int = Field(1234, description="Seed every stage derives its randomness from.")
    retries: int = Field(0, ge=0, le=10, description="Prefect retries of a failed stage task.")
    retry_delay_s: float = Field(5.0, ge=0, description="Seconds between retries.")
    alignment: Literal["ppo", "dpo"] = Field("ppo", description="After sft: reward model + PPO, or DPO alone.")


class RayEngine(StrictModel):
    address: Optional[str] = Field(None, description="Existing Ray cluster (ray://host:10001 or auto); null = local ray.init().")
    num_cpus: Optional[int] = Field(None, gt=0, description="CPUs of the local Ray; null = all of this machine's.")


class MlflowEngine(StrictModel):
    tracking_uri: Optional[str] = Field(None, description="null = $MLFLOW_TRACKING_URI or SQLite under .lmforge/.")
    ui_host: str = Field("127.0.0.1", description="Where `lmforge ui` binds the MLflow UI.")
    ui_port: int = Field(5000, gt=0, lt=65536)


class PrefectEngine(StrictModel):
    api_url: Optional[str] = Field(None, description="null = $PREFECT_API_URL or a local server started by lmforge.")
    host: str = Field("127.0.0.1", description="Where the local Prefect server binds.")
    port: int = Field(4200, gt=0, lt=65536)
    startup_timeout_s: float = Field(180.0, gt=0, description="How long to wait for a new server's health check.")


class RayJobEngine(StrictModel):
    address: str = Field("http://127.0.0.1:8265", description="Ray Jobs API (the head's dashboard) that ray-job submits to.")
    python: Optional[str] = Field(None, description="Interpreter on the cluster that has lmforge installed; null = this "
                                                    "one (a cluster on this machine).")
    poll_s: float = Field(2.0, gt=0, description="How often job status and new log lines are fetched.")
    submit_timeout_s: float = Field(120.0, gt=0, description="How long to retry while the head's job agent starts.")


class EnginesConfig(StrictModel):
    executor: Literal["inline", "ray-job"] = Field(
        "inline", description="inline: stages run in the flow's process on local/attached Ray; ray-job: each stage is "
                              "submitted as `python -m stages ...` through the Ray Jobs API.")
    ray: RayEngine = Field(default_factory=RayEngine)
    ray_job: RayJobEngine = Field(default_factory=RayJobEngine)
    mlflow: MlflowEngine = Field(default_factory=MlflowEngine)
    prefect: PrefectEngine = Field(default_factory=PrefectEngine)


class PipelineConfig(StrictModel):
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    align_data: AlignDataConfig = Field(default_factory=AlignDataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    def stage_config(self, name: str) -> StrictModel:
        return getattr(self, name)

    @model_validator(mode="after")
    def _reward_lm_term_needs_a_tied_head(self):
        if self.reward.lm_coef and not self.pretrain.model.tie_embeddings:
            raise ValueError("reward.lm_coef trains the backbone's tied LM head, but pretrain.model.tie_embeddings is "
                             "false: set one of them (reward.lm_coef: 0 or tie_embeddings: true)")
        return self


def load_config(path: Optional[Path] = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults <- YAML file <- ``--set`` overrides, validated."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> PipelineConfig:
    known = set(PipelineConfig.model_fields)
    unknown = [key for key in data if key not in known]
    if unknown:
        from stages.registry import STAGE_ORDER

        later = [key for key in unknown if key in STAGE_ORDER]
        if later:
            raise ConfigError(f"section(s) {later} name stages that are not implemented yet; allowed: {', '.join(sorted(known))}")
        raise ConfigError(f"unknown key '{unknown[0]}'; allowed: {', '.join(PipelineConfig.model_fields)}")
    return validate(PipelineConfig, data)  # type: ignore[return-value]
