"""Where a figure was measured, and what the cache key knows of the environment.

``environment_hash`` is the cache key's environment part: the exact versions of lmforge's
runtime dependencies, followed transitively from the installed distribution's own
requirements (extras such as ``test`` left out). Bumping pytest or a linter therefore
recomputes nothing, while a new torch or transformers recomputes every stage. It is
computed from what is installed, so an editable checkout, a wheel install and a cluster
image all get one, never a placeholder. Library versions and hardware go into every
manifest so a number can be traced to the libraries and the machine that produced it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from collections.abc import Callable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stages.core.digests import sha256_json

DISTRIBUTION = "lmforge"
_LIBRARIES = (
    "torch", "ray", "mlflow", "prefect", "pydantic", "pyarrow", "datasketch",
    "fasttext-numpy2", "trafilatura", "transformers", "tokenizers", "deepspeed",
)


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = default_environment()
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in (extras or {""}))


def runtime_distributions(root: str = DISTRIBUTION,
                          requires: Callable[[str], list[str] | None] = importlib.metadata.requires,
                          version: Callable[[str], str] = importlib.metadata.version) -> dict[str, str]:
    """{distribution: installed version} of everything ``root`` needs to run, transitively."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            listed = requires(name) or []
            if name != root:
                found[name] = version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform, not installed here
        for line in listed:
            requirement = Requirement(line)
            if _applies(requirement, extras):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return dict(sorted(found.items()))


@functools.cache
def environment_hash() -> str:
    """sha256 of the runtime dependencies' exact versions (see the module docstring)."""
    try:
        importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the '{DISTRIBUTION}' distribution is not installed, so its runtime dependencies are "
                           "unknown: install it (pip install -e . or infra/setup.sh)") from None
    return sha256_json(runtime_distributions())


@functools.cache
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def hardware() -> dict[str, object]:
    import psutil

    info: dict[str, object] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "machine": platform.machine(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = {
                "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count(),
            }
    except ImportError:
        pass
    return info
