"""MLflow as the lineage store and the only stage cache.

One experiment per pipeline config name, one parent run per pipeline run, one child
run per stage run. A child run is tagged with its cache key and marked complete
only after its outputs and manifest are logged, so a killed stage can never be
mistaken for a finished one.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from stages.core.configuration import flatten
from stages.core.paths import lmforge_home

from stages.core.names import LATEST, TAG_CACHE_KEY, TAG_COMPLETE, TAG_ERROR, TAG_STAGE
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment of unknown kind in its GenAI view (traces, evaluations); lmforge's are
# model-training experiments, which it shows in the classic runs view
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI picks GenAI or classic by its own switch, which a link sets with this query
CLASSIC_VIEW = "workflowType=machine_learning"


def ui_link(base: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens in the classic (model-training) view."""
    path = "#/experiments" + (f"/{experiment_id}/runs" if experiment_id else "") + (f"/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/{path}?{CLASSIC_VIEW}"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./ ]")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set (e.g. a team server), else SQLite under LMFORGE_HOME."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = lmforge_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return lmforge_home() / "mlartifacts"


def local_path_of(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


class Tracker:
    """Thin, explicit wrapper over ``MlflowClient`` (no fluent global run state:
    Prefect tasks and Ray callbacks must never log into the wrong run)."""

    def __init__(self, experiment: str, tracking_uri: str | None = None):
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_name = experiment
        self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:") or self.tracking_uri.startswith("file:"):
            root = default_artifact_root()
            root.mkdir(parents=True, exist_ok=True)
            artifact_location = (root / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # a concurrent creator won the race
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # runs ---------------------------------------------------------------
    def start_run(self, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        tags = dict(tags)
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(key, _param_value(value)) for key, value in flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_METRIC_NAME.sub("_", key), float(value), now, step or 0)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_dataset_inputs(self, run_id: str, inputs: dict[str, Any]) -> None:
        """Each input (a ``StageInput``) as an MLflow dataset input: name, content digest, and the upstream run or
        path it came from, so MLflow's UI shows which data a run read (the digest is cut to MLflow's 36
        characters; the manifest keeps the full sha256)."""
        import json as _json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = []
        for name, item in sorted(inputs.items()):
            source = {"run_id": item.run_id} if item.run_id else {"path": str(item.path)}
            dataset = Dataset(name=name, digest=item.digest[:36], source_type="lmforge-run" if item.run_id else "local",
                              source=_json.dumps(source))
            datasets.append(DatasetInput(dataset, [InputTag("mlflow.data.context", name)]))
        if datasets:
            self.client.log_inputs(run_id, datasets=datasets)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value)[:5000])

    def log_artifacts(self, run_id: str, local_dir: Path) -> None:
        self.client.log_artifacts(run_id, str(local_dir))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, message: str) -> None:
        self.set_tags(run_id, {TAG_ERROR: message})
        self.finish(run_id, "FAILED")

    # cache and lineage --------------------------------------------------
    def find_cached(self, stage: str, cache_key: str) -> str | None:
        """The newest complete, finished run of ``stage`` with this cache key."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_CACHE_KEY}` = '{cache_key}' and tags.`{TAG_STAGE}` = '{stage}' "
                f"and tags.`{TAG_COMPLETE}` = 'true' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def artifacts_path(self, run_id: str) -> Path:
        """Local folder holding a run's artifacts (downloaded once if the store is remote)."""
        uri = self.client.get_run(run_id).info.artifact_uri
        local = local_path_of(uri)
        if local is not None:
            return local
        dest = lmforge_home() / "cache" / "artifacts" / run_id
        if not (dest / ".complete").exists():
            from mlflow.artifacts import download_artifacts

            dest.mkdir(parents=True, exist_ok=True)
            download_artifacts(run_id=run_id, dst_path=str(dest), tracking_uri=self.tracking_uri)
            (dest / ".complete").touch()
        return dest

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)


def _param_value(value: Any) -> str:
    text = str(value) if not isinstance(value, (list, dict)) else repr(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def register_artifact(tracker: Tracker, name: str, run_id: str, artifact_path: str, alias: str) -> str:
    """Register a run's artifact as a new version of ``name`` and point ``alias`` at it."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists already
    source = f"{tracker.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id)
    if alias.lower() != LATEST:  # MLflow reserves "latest": it always means the newest version
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def resolve_registered(uri: str, tracking_uri: str | None = None) -> tuple[Path, str, str]:
    """(local folder, registered name, version) of MLflow's own ``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION`` (``@latest``: the newest version). The one place lmforge turns a
    registered model into files: a local store's path as is, anything else downloaded by MLflow."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    from stages.core.errors import ConfigError

    if not uri.startswith("models:/"):
        raise ConfigError(f"{uri!r} is not a registered model URI (models:/NAME@ALIAS or models:/NAME/VERSION)")
    spec = uri.removeprefix("models:/")
    store = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=store)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        if alias.lower() == LATEST:  # MLflow reserves the word: the newest version, never a set alias
            found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
            if not found:
                raise ConfigError(f"{uri}: {name} has no version")
            version = found[0]
        else:
            version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = spec.rpartition("/")
        version = client.get_model_version(name, number)
    local = local_path_of(version.source)
    if local is None or not local.exists():
        local = Path(download_artifacts(artifact_uri=version.source, tracking_uri=store))
    return local, name, str(version.version)


def find_registered(name: str, alias: str, tracking_uri: str | None = None) -> Path | None:
    """Local path of ``name@alias`` in the tracking store, or None (no such model or alias, no store yet)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    from mlflow.exceptions import MlflowException

    from stages.core.errors import ConfigError
    from stages.core.names import model_uri

    try:
        return resolve_registered(model_uri(name, alias), uri)[0]
    except (MlflowException, ConfigError):
        return None
