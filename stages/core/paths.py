"""Where lmforge keeps its state, so every command and test agrees on it.

Everything lives under ``LMFORGE_HOME`` (default ``./.lmforge``): the embedded MLflow
store, Prefect's home, pid files of servers lmforge started, stage work dirs. The
fetched demo corpus lives in ``LMFORGE_DATA_DIR`` (default ``$LMFORGE_HOME/data``) so
tests with a throw-away home can still read the corpus fetched at setup.
"""

from __future__ import annotations

import os
from pathlib import Path


def lmforge_home() -> Path:
    return Path(os.environ.get("LMFORGE_HOME", Path.cwd() / ".lmforge")).resolve()


def data_dir() -> Path:
    default = lmforge_home() / "data"
    return Path(os.environ.get("LMFORGE_DATA_DIR", default)).resolve()


def raw_data_dir() -> Path:
    return data_dir() / "raw"


def work_root() -> Path:
    return lmforge_home() / "work"


def run_dir() -> Path:
    """Pid files and logs of the servers lmforge started."""
    path = lmforge_home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    """The checkout (or install) root: the folder holding ``stages/``."""
    return Path(__file__).resolve().parents[2]
