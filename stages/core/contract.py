"""The stage contract: what every stage declares and what it hands back.

A stage is a class with a name, a config model, named inputs and one ``run(ctx)``.
Everything around it (cache key, manifest, atomic outputs, MLflow run) is done once,
in ``stages.core.runner``, so adding a stage is writing ``run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stages.core.configuration import StrictModel

if TYPE_CHECKING:
    from stages.core.tracking import Tracker


class StageConfig(StrictModel):
    """Base of every stage's config section."""


@dataclass(frozen=True)
class StageInput:
    """One resolved input: a local path, its content digest, and where it came from."""

    name: str
    path: Path
    digest: str
    run_id: str | None = None


@dataclass
class StageContext:
    stage: str
    config: StageConfig
    inputs: dict[str, StageInput]
    output_dir: Path
    seed: int
    run_id: str | None = None
    tracker: Tracker | None = None
    ray_address: str | None = None
    ray_num_cpus: float | None = None
    pipeline_name: str = "demo"
    cache_key: str = ""  # names resumable state (e.g. training checkpoints) of this exact run
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lmforge.stage"))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Step metrics (training curves) go to MLflow while the stage runs."""
        if self.tracker is not None and self.run_id is not None:
            self.tracker.log_metrics(self.run_id, metrics, step=step)


@dataclass
class StageResult:
    """What ``run`` hands back: counts (for the invariant), figures, manifest extras."""

    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> path relative to the output dir


class Stage:
    """Subclass per stage; set the class attributes and implement ``run``."""

    name: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    # input name -> "upstream_stage:output_name"; the flow resolves these from upstream runs
    inputs: ClassVar[dict[str, str]] = {}
    # inputs a standalone run may name (--input NAME=PATH) but the flow does not wire
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    # standalone runs without --input NAME take lmforge-<cfg>-<kind>@<alias> from the registry
    registered_defaults: ClassVar[dict[str, tuple[str, str]]] = {}
    # document stages obey in = kept + removed + quarantined
    document_stage: ClassVar[bool] = False

    def config_inputs(self, config: StageConfig, seed: int) -> dict[str, StageInput]:
        """Inputs named by the config itself (e.g. ingest's source files), not by upstream runs."""
        return {}

    def standalone_inputs(
        self, config: StageConfig, paths: dict[str, list[str]]
    ) -> tuple[StageConfig, dict[str, StageInput]]:
        """Turn ``--input NAME=PATH`` flags into resolved inputs (a stage may fold them into its config)."""
        from stages.core.errors import ConfigError
        from stages.core.runner import input_from_path

        allowed = set(self.inputs) | set(self.optional_inputs)
        unknown = sorted(set(paths) - allowed)
        if unknown:
            raise ConfigError(f"{self.name} has no input {unknown}; inputs: {', '.join(sorted(allowed)) or 'none'}")
        missing = sorted(set(self.inputs) - set(paths))
        if missing:
            raise ConfigError(f"{self.name} needs --input for {missing}")
        resolved = {}
        for name, items in paths.items():
            if len(items) != 1:
                raise ConfigError(f"{self.name}: input '{name}' takes one path, got {len(items)}")
            resolved[name] = input_from_path(name, Path(items[0]))
        return config, resolved

    def after_logged(self, tracker: Tracker, run_id: str, output_dir: Path, result: StageResult,
                     pipeline_name: str) -> dict[str, str]:
        """Runs once the outputs are MLflow artifacts (e.g. register a model); returns tags to set."""
        return {}

    def run(self, ctx: StageContext) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def module(cls) -> str:
        return cls.__module__
