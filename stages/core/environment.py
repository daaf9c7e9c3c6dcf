"""Where a figure was measured: lock-file hash, library versions and hardware.

Recorded in every manifest so a number can be traced to the code, the installed
libraries and the machine that produced it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path

from stages.core.digests import sha256_file
from stages.core.paths import repo_root

LOCK_FILE = "requirements.lock"
_LIBRARIES = (
    "torch", "ray", "mlflow", "prefect", "pydantic", "pyarrow", "datasketch",
    "fasttext-numpy2", "trafilatura", "transformers", "tokenizers", "deepspeed",
)


@functools.cache
def lock_hash() -> str:
    path = repo_root() / LOCK_FILE
    return sha256_file(path) if path.exists() else "no-lock-file"


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
