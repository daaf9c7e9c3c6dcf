"""manifest.json: the lineage record written beside every stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.core.atomic import atomic_write_text
from stages.core.digests import canonical_json

MANIFEST = "manifest.json"


def write_manifest(output_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(output_dir) / MANIFEST
    atomic_write_text(path, json.dumps(json.loads(canonical_json(manifest)), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(output_dir: Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / MANIFEST).read_text(encoding="utf-8"))
