"""Which stages exist and the DAG their input declarations make.

Built-in stages are listed below; a package adds its own through the entry-point group
``lmforge.stages`` (``name = "module:Class"``), with no change to lmforge. Everything
else (the pipeline config's sections, the run order, ``--until``, compare, the
dashboard) is read from the stages' own declarations: see ``docs/writing-a-stage.md``.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from stages.core.contract import Stage, parse_input
from stages.core.errors import ConfigError

ENTRY_POINT_GROUP = "lmforge.stages"

# Built-in stages. Their order only breaks ties between stages the DAG leaves unordered.
BUILTIN_STAGES = (
    "stages.ingest.stage:IngestStage",
    "stages.dedup.stage:DedupStage",
    "stages.quality.stage:QualityStage",
    "stages.tokenize.stage:TokenizeStage",
    "stages.pretrain.stage:PretrainStage",
    "stages.import_model.stage:ImportModelStage",
    "stages.align_data.stage:AlignDataStage",
    "stages.sft.stage:SFTStage",
    "stages.reward.stage:RewardStage",
    "stages.ppo.stage:PPOStage",
    "stages.dpo.stage:DPOStage",
    "stages.grpo.stage:GRPOStage",
    "stages.quantize.stage:QuantizeStage",
    "stages.deploy.stage:DeployStage",
)


def _load(reference: str, origin: str) -> type[Stage]:
    module, _, attr = reference.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"stage {reference} ({origin}) cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{reference} ({origin}) is not a lmforge Stage subclass")
    for attribute in ("name", "config_model"):
        if not hasattr(cls, attribute):
            raise ConfigError(f"stage {reference} ({origin}) declares no '{attribute}'")
    return cls


@functools.cache
def stage_classes() -> dict[str, type[Stage]]:
    """name -> stage class: the built-ins, then installed plugins (by entry-point name)."""
    found: dict[str, type[Stage]] = {}
    for reference in BUILTIN_STAGES:
        cls = _load(reference, "built-in")
        found[cls.name] = cls
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        origin = f"entry point '{point.name}' of {point.dist.name if point.dist else 'an unknown distribution'}"
        cls = _load(point.value, origin)
        if cls.name != point.name:
            raise ConfigError(f"{origin} names class {point.value}, whose stage name is '{cls.name}'")
        if cls.name in found:
            if found[cls.name] is cls:  # the same class registered twice (an editable and a wheel install)
                continue
            raise ConfigError(f"{origin}: a stage named '{cls.name}' already exists ({found[cls.name].__module__})")
        found[cls.name] = cls
    _check_inputs(found)
    return found


def reload() -> None:
    """Forget what was discovered (after installing a plugin in this process)."""
    stage_classes.cache_clear()
    dag_order.cache_clear()


def _check_inputs(found: dict[str, type[Stage]]) -> None:
    """Every input names a stage that exists, and every registered default a model kind some stage writes."""
    kinds = {kind for cls in found.values() for kind in cls.model_kinds}
    for cls in found.values():
        for input_name, (kind, _alias) in cls.registered_defaults.items():
            if kind not in kinds:
                raise ConfigError(f"stage '{cls.name}' input '{input_name}' defaults to a registered '{kind}' model, "
                                  f"which no stage writes (model kinds: {', '.join(sorted(kinds))})")
    for cls in found.values():
        for input_name, spec in cls.inputs.items():
            _, sep, output = spec.partition(":")
            if not sep or not output.rstrip("?"):
                raise ConfigError(f"stage '{cls.name}' input '{input_name}': expected 'stage:output', got {spec!r}")
            missing = [u for u in parse_input(spec)[0] if u not in found]
            if missing:
                raise ConfigError(f"stage '{cls.name}' input '{input_name}' comes from unknown stage(s) {missing}; "
                                  f"known: {', '.join(found)}")


def choice_values() -> dict[str, tuple[str, ...]]:
    """Each ``runs_when`` key the stages declare -> its allowed values, the default (listed first) first."""
    values: dict[str, dict[str, None]] = {}
    for cls in stage_classes().values():
        for key, options in cls.runs_when_options().items():
            for one in options:
                values.setdefault(key, {})[one] = None
    return {key: tuple(found) for key, found in values.items()}


@functools.cache
def dag_order() -> tuple[str, ...]:
    """Every stage in an order where each comes after all it reads from (Kahn's algorithm; ties keep the
    listing order, so the order is stable)."""
    classes = stage_classes()
    listed = list(classes)
    waiting = {name: cls.upstream() for name, cls in classes.items()}
    order: list[str] = []
    while waiting:
        ready = [n for n in listed if n in waiting and not (waiting[n] - set(order))]
        if not ready:
            raise ConfigError(f"the stages' inputs form a cycle among {sorted(waiting)}")
        order.append(ready[0])
        del waiting[ready[0]]
    return tuple(order)


def names() -> list[str]:
    return list(dag_order())


def stage_class(name: str) -> type[Stage]:
    classes = stage_classes()
    if name not in classes:
        raise ConfigError(f"unknown stage '{name}'; allowed: {', '.join(dag_order())}")
    return classes[name]


def get_stage(name: str) -> Stage:
    return stage_class(name)()
