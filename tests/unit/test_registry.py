"""The DAG is what the stages' inputs declare: order, --until, what a rerun redoes, and the errors a bad
declaration gets."""

from __future__ import annotations

import pytest

from pipelines.dag import downstream, stages_to_run, upstream_in_run
from stages import registry
from stages.core.contract import Figure, Stage, StageConfig
from stages.core.errors import ConfigError


def test_the_built_in_dag_comes_from_the_inputs():
    order = registry.dag_order()
    for name in order:
        for up in registry.stage_class(name).upstream():
            assert order.index(up) < order.index(name), (up, name)
    assert order == ("ingest", "dedup", "quality", "import_model", "tokenize", "pretrain", "align_data", "sft",
                     "reward", "ppo", "dpo", "grpo", "quantize", "deploy")


def test_an_imported_base_model_takes_pretrainings_place_and_lends_tokenize_its_tokenizer():
    """pipeline.base: import runs import_model instead of pretrain; tokenize's "?" input is wired only then."""
    from stages.core.lineage import wired

    imported = stages_to_run(None, {"alignment": "ppo", "base": "import"})
    assert "pretrain" not in imported and imported.index("import_model") < imported.index("tokenize")
    assert stages_to_run("sft", {"alignment": "ppo", "base": "import"}) == [
        "ingest", "dedup", "quality", "import_model", "tokenize", "align_data", "sft"]
    assert "import_model" not in stages_to_run(None, {"alignment": "ppo", "base": "pretrain"})
    tokenize = registry.stage_class("tokenize")
    assert set(wired(tokenize, {"quality": "q", "import_model": "i"})) == {"docs", "tokenizer"}
    assert set(wired(tokenize, {"quality": "q"})) == {"docs"}
    assert tokenize.required_inputs() == {"docs"}


def test_until_runs_a_stage_and_what_it_reads_from_only():
    ppo = {"alignment": "ppo"}
    assert stages_to_run("align_data", ppo) == ["ingest", "dedup", "quality", "tokenize", "align_data"]
    assert stages_to_run("pretrain", ppo) == ["ingest", "dedup", "quality", "tokenize", "pretrain"]
    assert stages_to_run("quantize", {"alignment": "dpo"})[-3:] == ["sft", "dpo", "quantize"]
    # the reward stage declares alignment "ppo|grpo": GRPO's reward mix may weigh its model
    assert stages_to_run("quantize", {"alignment": "grpo"})[-4:] == ["sft", "reward", "grpo", "quantize"]
    assert registry.choice_values()["alignment"] == ("ppo", "grpo", "dpo")
    assert upstream_in_run("quantize", stages_to_run(None, ppo)) == ["tokenize", "align_data", "ppo"]


def test_a_rerun_redoes_the_stage_and_what_reads_from_it():
    names = stages_to_run(None, {"alignment": "ppo"})
    assert downstream("pretrain", names) == ["pretrain", "sft", "reward", "ppo", "quantize", "deploy"]
    assert downstream("align_data", names) == ["align_data", "sft", "reward", "ppo", "quantize", "deploy"]
    assert downstream("deploy", names) == ["deploy"]


class _Config(StageConfig):
    pass


def _stage(stage_name: str, reads: dict[str, str]) -> type[Stage]:
    return type(f"S_{stage_name}", (Stage,), {"name": stage_name, "config_model": _Config, "inputs": reads})


def test_bad_declarations_are_refused_with_the_stage_named(monkeypatch):
    classes = {"a": _stage("a", {"x": "b:out"}), "b": _stage("b", {"y": "a:out"})}
    monkeypatch.setattr(registry, "stage_classes", lambda: classes)
    registry.dag_order.cache_clear()
    try:
        with pytest.raises(ConfigError, match="cycle"):
            registry.dag_order()
        with pytest.raises(ConfigError, match="stage 'a' input 'x' comes from unknown stage"):
            registry._check_inputs({"a": classes["a"]})
        with pytest.raises(ConfigError, match="expected 'stage:output'"):
            registry._check_inputs({"c": _stage("c", {"z": "nothing"})})
        reads_a_model = _stage("d", {})
        reads_a_model.registered_defaults = {"model": ("lm", "latest-x")}
        with pytest.raises(ConfigError, match="defaults to a registered 'lm' model, which no stage writes"):
            registry._check_inputs({"d": reads_a_model})
    finally:
        registry.dag_order.cache_clear()


def test_a_figure_declaration_gives_key_and_direction():
    from pipelines.runs import direction, is_key_figure

    assert is_key_figure("quantize.int8.perplexity_delta") and direction("quantize.int8.perplexity_delta") == "min"
    assert not is_key_figure("quality.lang.en") and direction("quality.lang.en") is None
    assert direction("nosuchstage.loss") is None  # a stage no longer installed: shown, never judged
    assert Figure("latency_p*_s", "lower").matches("latency_p99_s")
