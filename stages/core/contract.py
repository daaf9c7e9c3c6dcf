"""The stage contract: what every stage declares and what it hands back.

A stage is a class with a name, a config model, named inputs and one ``run(ctx)``.
It also declares what the rest of lmforge needs to know of it: which upstream stage
produces each input (the DAG is built from these), the figures it reports and which
way each is better (``lmforge compare``, the roll-up, the dashboard), the registered
model kinds it writes, and the curves the dashboard draws of it. Everything around
``run`` (cache key, manifest, atomic outputs, MLflow run) is done once, in
``stages.core.runner``, so adding a stage is one module and one registry entry.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from stages.core.configuration import StrictModel

if TYPE_CHECKING:
    from stages.core.tracking import Tracker


class StageConfig(StrictModel):
    """Base of every stage's config section."""


ConfigT = TypeVar("ConfigT", bound=StageConfig)


@dataclass(frozen=True)
class Figure:
    """A figure a stage reports (a metric of its run, rolled up onto the pipeline run as ``<stage>.<name>``).

    ``name`` may hold ``*`` for a part that varies (a variant, a task family): ``*.perplexity_delta``.
    ``better`` says which way is an improvement when runs are compared; ``key`` marks the few figures
    that pipelines are compared by (``lmforge compare`` without ``--all``, the flow's summary table).
    """

    name: str
    better: Literal["lower", "higher", "none"] = "none"
    key: bool = False

    def matches(self, figure: str) -> bool:
        return fnmatch.fnmatchcase(figure, self.name)


# what the flow rolls up for every stage besides its own figures
COMMON_FIGURES = (Figure("duration_s", "lower", key=True), Figure("reused"))
# what every document stage reports (in = kept + removed + quarantined)
DOCUMENT_FIGURES = (Figure("in"), Figure("kept", key=True), Figure("removed", key=True),
                    Figure("quarantined", "lower"), Figure("quarantined.*", "lower"))


@dataclass(frozen=True)
class FunnelStep:
    """This stage's bar in the data funnel: documents after it (a sum of figures), and its text size."""

    docs: tuple[str, ...] = ("kept",)
    mb: str | None = None  # a figure holding the text's size...
    mb_per_unit: float = 1.0  # ...in MB per unit of that figure (1e-6 for a character count)
    tokens: str | None = None


@dataclass(frozen=True)
class Dashboard:
    """What the dashboard draws of a stage. Curve charts are shared by title: stages that log comparable
    step curves (SFT's and DPO's loss) name the same chart."""

    # chart title -> the step metrics this stage logs while it runs (one line each)
    curves: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # evaluation models whose per-family pass rates (``<model>.pass_rate.<family>``) are plotted
    pass_rates: tuple[str, ...] = ()
    # removals by reason: figure -> what the "why documents left" panel calls it (``*`` = the part it names)
    removed: dict[str, str] = field(default_factory=dict)
    # quarantined.<reason> figures go into the "why documents left" panel
    quarantines: bool = False
    funnel: FunnelStep | None = None
    # fixed panels of the page this stage fills (quantization, gate, serving)
    panels: tuple[str, ...] = ()


def parse_input(spec: str) -> tuple[list[str], str, bool]:
    """``"ppo|dpo:model"`` -> (["ppo", "dpo"], "model", False); ``"import_model:tokenizer?"`` -> (..., True)."""
    choices, _, output = spec.partition(":")
    return choices.split("|"), output.rstrip("?"), output.endswith("?")


@dataclass(frozen=True)
class StageInput:
    """One resolved input: a local path, its content digest, and where it came from."""

    name: str
    path: Path
    digest: str
    run_id: str | None = None


def work_name(run_id: str | None) -> str:
    """The name of a stage's work folder on object storage, saying whose it is so that ``lmforge gc`` can tell a
    running stage's from a killed one's: ``<MLflow run id>-<token>`` for a tracked run (its pipeline's state
    decides), ``adhoc-<host>-<pid>-<token>`` for an untracked ``lmforge stage`` (its process decides)."""
    token = uuid.uuid4().hex[:8]
    if run_id:
        return f"{run_id}-{token}"
    return f"adhoc-{socket.gethostname()}-{os.getpid()}-{token}"


def work_owner(name: str) -> tuple[str, str | int] | None:
    """``("run", run id)`` or ``("process", pid)`` of a name ``work_name`` made (for a process, only when it ran
    on this host: another host's process cannot be looked up from here), else None."""
    if name.startswith("adhoc-"):
        host, pid, _ = name[len("adhoc-"):].rsplit("-", 2)
        return ("process", int(pid)) if host == socket.gethostname() and pid.isdigit() else None
    run_id, _, token = name.rpartition("-")
    return ("run", run_id) if run_id and token else None


@dataclass
class StageContext(Generic[ConfigT]):
    stage: str
    config: ConfigT
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
    # object storage (s3://bucket/prefix) where Ray tasks hand files to each other; None = local disk
    storage: str | None = None
    work: str | None = None  # the work location, once asked for

    def work_location(self) -> str:
        """This run's folder for work files, which every Ray task can reach: under the output folder on
        local disk, or a fresh one under ``storage`` when nodes share no disk (the runner removes it
        if the stage fails; ``lmforge gc`` removes what a killed one left, see ``work_name``)."""
        if self.work is None:
            if self.storage is None:
                self.work = str(self.output_dir / "_work")
            else:
                from stages.core.storage import join

                self.work = join(self.storage, "work", self.stage, work_name(self.run_id))
        return self.work

    def for_workers(self, local: Path, name: str) -> str:
        """Where Ray workers read a file or folder of the driver's (an input, or something the stage wrote): the
        path itself on local disk; on object storage a copy under the work location, which a worker turns back
        into a local path with ``storage.fetched``."""
        if self.storage is None:
            return str(local)
        from stages.core.storage import join, upload_tree

        location = join(self.work_location(), "for-workers", name)
        upload_tree(Path(local), location)
        return location

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


class Stage(Generic[ConfigT]):
    """Subclass per stage (``class DedupStage(Stage[DedupConfig])``); set the class attributes and implement
    ``run``. The registry reads the declarations; nothing else in lmforge names a stage."""

    name: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    # one line for `lmforge config schema` and the stage's --help
    summary: ClassVar[str] = ""
    # input name -> "upstream_stage:output_name" ("ppo|dpo:model": whichever of them runs; a trailing "?" wires it
    # only when that stage runs in the pipeline run, "import_model:tokenizer?"); the DAG's edges
    inputs: ClassVar[dict[str, str]] = {}
    # inputs a standalone run may name (--input NAME=PATH) but the flow does not wire
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    # standalone runs without --input NAME take lmforge-<cfg>-<kind>@<alias> from the registry
    registered_defaults: ClassVar[dict[str, tuple[str, str]]] = {}
    # the registered model kinds this stage writes (lmforge-<cfg>-<kind>)
    model_kinds: ClassVar[tuple[str, ...]] = ()
    # runs only when these pipeline-section fields have these values ({"alignment": "dpo"}, or one of several:
    # {"alignment": "ppo|grpo"}); the field's allowed values are the ones the stages declare
    runs_when: ClassVar[dict[str, str]] = {}
    # document stages obey in = kept + removed + quarantined
    document_stage: ClassVar[bool] = False
    figures: ClassVar[tuple[Figure, ...]] = ()
    dashboard: ClassVar[Dashboard] = Dashboard()

    @classmethod
    def runs_when_options(cls) -> dict[str, list[str]]:
        """``runs_when`` with each choice's values listed (``"ppo|grpo"`` -> ``["ppo", "grpo"]``)."""
        return {key: value.split("|") for key, value in cls.runs_when.items()}

    @classmethod
    def runs_under(cls, choices: Any) -> bool:
        """Whether this stage runs under these ``pipeline.*`` values (a mapping, or the pipeline section)."""
        get = choices.get if hasattr(choices, "get") else lambda key: getattr(choices, key, None)
        return all(str(get(key)) in values for key, values in cls.runs_when_options().items())

    @classmethod
    def check_pipeline(cls, config: Any) -> None:
        """A rule that spans stages (this one's settings against another's): raise ValueError to refuse the
        whole config. ``config`` is the validated pipeline config; its sections are attributes."""

    @classmethod
    def upstream(cls) -> set[str]:
        """Every stage an input of this one may come from."""
        return {up for spec in cls.inputs.values() for up in parse_input(spec)[0]}

    @classmethod
    def required_inputs(cls) -> set[str]:
        """The inputs every run needs (not the "?" ones, wired only when their stage runs)."""
        return {name for name, spec in cls.inputs.items() if not parse_input(spec)[2]}

    @classmethod
    def all_figures(cls) -> tuple[Figure, ...]:
        return cls.figures + (DOCUMENT_FIGURES if cls.document_stage else ()) + COMMON_FIGURES

    @classmethod
    def figure(cls, name: str) -> Figure | None:
        """The declaration a reported figure falls under (the first that matches), if any."""
        return next((f for f in cls.all_figures() if f.matches(name)), None)

    def config_inputs(self, config: ConfigT, seed: int) -> dict[str, StageInput]:
        """Inputs named by the config itself (e.g. ingest's source files), not by upstream runs."""
        return {}

    def standalone_inputs(
        self, config: ConfigT, paths: dict[str, list[str]]
    ) -> tuple[ConfigT, dict[str, StageInput]]:
        """Turn ``--input NAME=PATH`` flags into resolved inputs (a stage may fold them into its config)."""
        from stages.core.errors import ConfigError
        from stages.core.runner import input_from_path

        allowed = set(self.inputs) | set(self.optional_inputs)
        unknown = sorted(set(paths) - allowed)
        if unknown:
            raise ConfigError(f"{self.name} has no input {unknown}; inputs: {', '.join(sorted(allowed)) or 'none'}")
        missing = sorted(self.required_inputs() - set(paths))
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

    def run(self, ctx: StageContext[ConfigT]) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def module(cls) -> str:
        return cls.__module__
