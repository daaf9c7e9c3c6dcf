"""Which stages a run covers, from the stages' declarations. Kept free of Prefect so the CLI
can check ``--until`` (and do a dry run) before Prefect is imported and configured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stages.core.errors import ConfigError
from stages.registry import choice_values, dag_order, stage_class


def chosen(name: str, choices: Mapping[str, Any]) -> bool:
    """Whether a stage runs under these pipeline-section values (``runs_when``: e.g. ``alignment: dpo``)."""
    defaults = {key: values[0] for key, values in choice_values().items()}  # a run logged before the key existed
    return stage_class(name).runs_under({**defaults, **choices})


def stages_to_run(until: str | None, choices: Mapping[str, Any]) -> list[str]:
    """The stages this config runs, in DAG order: all of them, or ``until`` and every stage it reads from,
    directly or not (a stage beside the path to ``until`` does not run)."""
    names = [n for n in dag_order() if chosen(n, choices)]
    if until is None:
        return names
    if until not in dag_order():
        raise ConfigError(f"--until: unknown stage '{until}'; allowed: {', '.join(names)}")
    if until not in names:
        wanted = stage_class(until).runs_when_options()
        now = ", ".join(f"pipeline.{k} is '{choices.get(k)}'" for k in wanted)
        sets = " ".join(f"pipeline.{k}={options[0]}" for k, options in wanted.items())
        raise ConfigError(f"--until {until}: {now}, which does not run it; set {sets} to run {until}")
    needed = {until}
    for name in reversed(names[: names.index(until) + 1]):
        if name in needed:
            needed |= stage_class(name).upstream()
    return [n for n in names if n in needed]


def downstream(stage: str, names: list[str]) -> list[str]:
    """``stage`` and every stage of ``names`` that reads from it, directly or not (what a rerun redoes)."""
    affected = {stage}
    for name in names[names.index(stage) + 1:]:
        if stage_class(name).upstream() & affected:
            affected.add(name)
    return [n for n in names if n in affected]


def upstream_in_run(name: str, names: list[str]) -> list[str]:
    """The stages of this run that ``name`` reads from: the edges the flow wires."""
    return [up for up in names if up in stage_class(name).upstream()]


def pipeline_choices(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pipeline.*`` values of a run's logged params, for ``stages_to_run`` on a past run."""
    return {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("pipeline.")}
