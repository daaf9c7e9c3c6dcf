"""The one-way arrow of docs/architecture.md: stages never import Prefect or pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

STAGES = Path(__file__).resolve().parents[2] / "stages"


def test_stages_import_neither_prefect_nor_pipelines():
    offenders = []
    for path in STAGES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("prefect", "pipelines")]
    assert offenders == []
    assert len(list(STAGES.rglob("*.py"))) > 10
