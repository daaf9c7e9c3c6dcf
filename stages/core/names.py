"""Every name lmforge gives things in MLflow, in one place: registered models, their aliases,
run tags. A stage, the flow, gc, the dashboard and the CLI all read them from here, so a
rename is one edit and a typo is an AttributeError, not a silent miss."""

from __future__ import annotations

# --- registered models: lmforge-<config name>-<kind> (the kinds are the stages' ``model_kinds``) ---


def registered_model(pipeline: str, kind: str) -> str:
    """``lmforge-<pipeline config name>-<kind>``: one registered model per config and kind."""
    return f"lmforge-{pipeline}-{kind}"


def model_uri(name: str, alias: str) -> str:
    """MLflow's own URI of a registered model's alias."""
    return f"models:/{name}@{alias}"


# --- aliases -----------------------------------------------------------------------------------
PRODUCTION = "production"  # what `lmforge serve` serves; moved only by the deploy gate and rollback
LATEST = "latest"  # MLflow's reserved word for the newest version (never set as an alias)
LATEST_QUANTIZED = "latest-quantized"


def latest_of(stage: str) -> str:
    """The alias a stage moves to the version it registered: ``latest-sft``, ``latest-ppo``, ..."""
    return f"latest-{stage}"


# --- run tags -----------------------------------------------------------------------------------
TAG_KIND = "lmforge.kind"  # "pipeline" on a pipeline's parent run
KIND_PIPELINE = "pipeline"
TAG_STAGE = "lmforge.stage"
TAG_CACHE_KEY = "lmforge.cache_key"
TAG_COMPLETE = "lmforge.complete"
TAG_PIPELINE = "lmforge.pipeline_run_id"
TAG_ERROR = "lmforge.error"
TAG_GC = "lmforge.gc"  # on a run whose artifacts gc removed
TAG_RAY_SUBMISSION = "lmforge.ray_submission_id"  # the Ray job that ran the stage (ray-job executor)


def job_result_tag(stage: str) -> str:
    """On a pipeline run: the Ray job that ran ``stage`` and the stage run it produced or reused (JSON)."""
    return f"lmforge.job.{stage}"


# on a pipeline run
TAG_PREFECT_FLOW_RUN = "lmforge.prefect_flow_run_id"
TAG_PREFECT_API = "lmforge.prefect_api_url"
TAG_CONFIG_PATH = "lmforge.config_path"
TAG_UNTIL = "lmforge.until"
TAG_STAGES = "lmforge.stages"
TAG_STAGE_RUNS = "lmforge.stage_runs"
TAG_CACHE_HITS = "lmforge.cache_hits"
TAG_FAILED_STAGE = "lmforge.failed_stage"
TAG_PID = "lmforge.pid"
TAG_HOST = "lmforge.host"
TAG_RERUN_OF = "lmforge.rerun_of"
TAG_RERUN_STAGE = "lmforge.rerun_stage"
TAG_FORCED = "lmforge.forced"
# on stage runs that register or serve models
TAG_REGISTERED_MODEL = "lmforge.registered_model"
TAG_REGISTERED_TOKENIZER = "lmforge.registered_tokenizer"
TAG_QUANTIZED = "lmforge.quantized"
TAG_QUANTIZED_VARIANT = "lmforge.quantized_variant"
TAG_CHOICE = "lmforge.choice"
TAG_ENDPOINT = "lmforge.endpoint"
TAG_PROMOTED = "lmforge.promoted"
TAG_GATE = "lmforge.gate"
TAG_SERVED_VERSION = "lmforge.served_version"
TAG_CANDIDATE_VERSION = "lmforge.candidate_version"
# on a model version: the production version it replaced (what rollback returns to)
TAG_PREVIOUS_PRODUCTION = "lmforge.previous_production"
