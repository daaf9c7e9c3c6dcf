"""The pipeline dashboard as one self-contained HTML file (plotly.js inlined, data as
JSON), so it opens from disk, as an MLflow artifact or behind ``lmforge dashboard``'s
own small server with no network access."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _template() -> str:
    """The page with plotly.js (4.8 MB) inlined, read once per process: the dashboard server renders per load."""
    from plotly.offline import get_plotlyjs

    template = (Path(__file__).parent / "pipeline.html").read_text(encoding="utf-8")
    return template.replace("/*PLOTLY*/", get_plotlyjs())


def render(data: dict[str, Any]) -> str:
    payload = json.dumps(data, default=str).replace("</", "<\\/")  # no early </script>
    return _template().replace("/*DATA*/", payload)


def write(data: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(path)
    return path
