"""Config loading: YAML + --set, errors that name the field and what is allowed."""

from __future__ import annotations

import pytest

from pipelines.config import DEFAULT_CONFIG, load_config
from stages.core.configuration import apply_overrides, flatten
from stages.core.errors import ConfigError
from tests.conftest import TINY


def test_demo_and_tiny_configs_load():
    demo = load_config(DEFAULT_CONFIG)
    tiny = load_config(TINY)
    assert demo.pipeline.name == "demo" and tiny.pipeline.name == "tiny"
    assert tiny.ingest.max_mb_per_source == 0.4 and tiny.ingest.source_mb["linux-doc"] == 1.2


def test_set_overrides_parse_yaml_scalars():
    cfg = load_config(TINY, ["ingest.task_mb=2.5", "pipeline.seed=7", "ingest.sources=[gutenberg]",
                             "engines.ray.num_cpus=1"])
    assert cfg.ingest.task_mb == 2.5 and cfg.pipeline.seed == 7
    assert cfg.ingest.sources == ["gutenberg"] and cfg.engines.ray.num_cpus == 1


def test_apply_overrides_creates_nested_sections_without_touching_input():
    data = {"a": {"b": 1}}
    merged = apply_overrides(data, ["a.c.d=x", "a.b=2"])
    assert merged == {"a": {"b": 2, "c": {"d": "x"}}}
    assert data == {"a": {"b": 1}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ingest.max_mb=3", "unknown key 'ingest.max_mb'; allowed: data_dir"),
        ("ingest.output_format=csv", "'ingest.output_format' ('csv'): Input should be 'parquet' or 'jsonl'"),
        ("ingest.sources=[nope]", "unknown source(s) ['nope']; allowed: debian-handbook"),
        ("pipeline.retries=-1", "'pipeline.retries' (-1)"),
        ("engines.executor=k8s", "Input should be 'inline'"),
        ("engines.storage=/mnt/shared", "'engines.storage' ('/mnt/shared'): String should match pattern '^s3://"),
        ("nonsense.x=1", "unknown key 'nonsense'; allowed: pipeline, engines, ingest"),
        ("deploy.server.port=70000", "'deploy.server.port' (70000)"),
        ("quantize.variants=[int3]", "'quantize.variants.0'"),
        ("quantize.bits=4", "unknown key 'quantize.bits'"),
        ("align_data.families=[poetry]", "unknown families ['poetry']; allowed: count_words"),
        ("pipeline.alignment=rlhf", "Input should be 'ppo', 'grpo' or 'dpo'"),
        ("sft.micro_batch_size=0", "'sft.micro_batch_size' (0)"),
        ("reward.ema_decay=1.5", "'reward.ema_decay' (1.5): Input should be less than 1"),
        ("reward.lm_coef=-1", "'reward.lm_coef' (-1)"),
        ("ingest.task_mb", "--set expects section.field=value"),
        ("ingest.task_mb.x=1", "is a value, not a section"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_options_that_conflict_with_other_fields_name_both():
    with pytest.raises(ConfigError, match="'reward'.*ema_decay needs every rank to hold the whole weights"):
        load_config(TINY, ["reward.ema_decay=0.9", "reward.distributed.zero_stage=3"])
    with pytest.raises(ConfigError, match="'reward'.*lm_coef reads the tied embedding"):
        load_config(TINY, ["reward.lm_coef=0.5", "reward.distributed.zero_stage=3"])
    with pytest.raises(ConfigError, match="reward.lm_coef trains the backbone's tied LM head, but "
                                          "pretrain.model.tie_embeddings is false"):
        load_config(TINY, ["reward.lm_coef=0.5", "pretrain.model.tie_embeddings=false"])


def test_bad_yaml_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_flatten_gives_dotted_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def test_alignment_switch_chooses_the_path_after_sft():
    from pipelines.dag import stages_to_run

    assert stages_to_run("ppo", {"alignment": "ppo"})[-4:] == ["align_data", "sft", "reward", "ppo"]
    assert stages_to_run("dpo", {"alignment": "dpo"})[-3:] == ["align_data", "sft", "dpo"]
    with pytest.raises(ConfigError, match="set pipeline.alignment=dpo to run dpo"):
        stages_to_run("dpo", {"alignment": "ppo"})
    with pytest.raises(ConfigError, match="set pipeline.alignment=ppo to run reward"):
        stages_to_run("reward", {"alignment": "dpo"})
