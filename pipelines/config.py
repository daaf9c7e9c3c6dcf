"""The pipeline config: ``pipeline`` and ``engines`` sections plus one section per stage.

The stage sections are not listed here: ``PipelineConfig`` is assembled from the
registered stages (each stage's name and config model), so a plugin's stage gets its
section, its ``--set`` overrides and its place in ``lmforge config schema`` by being
installed. Loaded from YAML, overridden with ``--set section.field=value``, validated
with models that forbid unknown keys; errors name the field and what is allowed (exit 2).
"""

from __future__ import annotations

from pathlib import Path
import functools
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, create_model, model_validator

from stages.core.configuration import StrictModel, apply_overrides, load_yaml, validate
from stages.core.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


class PipelineSectionBase(StrictModel):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Config name: the MLflow experiment and the registered-model prefix lmforge-<name>-*.")
    seed: int = Field(1234, description="Seed every stage derives its randomness from.")
    retries: int = Field(0, ge=0, le=10, description="Prefect retries of a failed stage task.")
    retry_delay_s: float = Field(5.0, ge=0, description="Seconds between retries.")


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
    storage: Optional[str] = Field(
        None, pattern=r"^s3://[A-Za-z0-9][A-Za-z0-9._-]*(/.*)?$",
        description="Object storage (s3://bucket/prefix) where Ray tasks hand work files to each other, so nodes need "
                    "no shared disk; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY. null = $LMFORGE_STORAGE, or the stage's folder on local disk.")
    ray_job: RayJobEngine = Field(default_factory=RayJobEngine)
    mlflow: MlflowEngine = Field(default_factory=MlflowEngine)
    prefect: PrefectEngine = Field(default_factory=PrefectEngine)


class PipelineConfigBase(StrictModel):
    pipeline: PipelineSectionBase = Field(default_factory=PipelineSectionBase)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)

    def stage_config(self, name: str) -> StrictModel:
        return getattr(self, name)

    @model_validator(mode="after")
    def _stages_agree(self):
        """Rules that span stages, each declared by the stage that needs it (``Stage.check_pipeline``)."""
        from stages.registry import stage_classes

        for cls in stage_classes().values():
            cls.check_pipeline(self)
        return self


def _choice_fields() -> dict[str, Any]:
    """``pipeline.<field>`` for each ``runs_when`` key the stages declare: its allowed values are the ones
    declared, its default the first stage's (in listing order)."""
    from stages.registry import stage_classes

    values: dict[str, dict[str, list[str]]] = {}
    for name, cls in stage_classes().items():
        for key, options in cls.runs_when_options().items():
            for one in options:
                values.setdefault(key, {}).setdefault(one, []).append(name)
    fields = {}
    for key, by_value in values.items():
        allowed = tuple(by_value)
        what = "; ".join(f"{v}: runs {', '.join(stages)}" for v, stages in by_value.items())
        fields[key] = (Literal[allowed], Field(allowed[0], description=f"Which stages run ({what})."))
    return fields


def pipeline_config_model() -> type[PipelineConfigBase]:
    """The whole config's model: ``pipeline``, ``engines`` and a section per registered stage."""
    from stages.registry import stage_classes

    return _assemble(tuple(stage_classes().items()))


@functools.cache
def _assemble(classes: tuple) -> type[PipelineConfigBase]:
    from stages.registry import dag_order, stage_class

    section = create_model("PipelineSection", __base__=PipelineSectionBase, **_choice_fields())
    stages = {name: (stage_class(name).config_model, Field(default_factory=stage_class(name).config_model,
                                                          description=stage_class(name).summary or None))
              for name in dag_order()}
    return create_model("PipelineConfig", __base__=PipelineConfigBase,
                        pipeline=(section, Field(default_factory=section)), **stages)


def __getattr__(name: str):
    if name == "PipelineConfig":  # assembled on first use, after the stages are discovered
        return pipeline_config_model()
    raise AttributeError(name)


if TYPE_CHECKING:
    PipelineConfig = PipelineConfigBase


def load_config(path: Optional[Path] = None, overrides: list[str] | None = None) -> PipelineConfigBase:
    """Defaults <- YAML file <- ``--set`` overrides, validated."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> PipelineConfigBase:
    model = pipeline_config_model()
    unknown = [key for key in data if key not in model.model_fields]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}'; allowed: {', '.join(model.model_fields)}")
    return validate(model, data)  # type: ignore[return-value]
