"""Which files ingest reads: the chosen demo sources, within budget, plus user paths.

The plan is deterministic (sorted, then a seeded shuffle for budgets), and its
fingerprint is ingest's input digest, so the cache key changes exactly when the
files read change.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
from pathlib import Path

from stages.core.digests import sha256_file
from stages.core.errors import StageError
from stages.core.paths import raw_data_dir
from stages.ingest.config import IngestConfig
from stages.ingest.extract import FileTask, kind_for_name
from stages.ingest.sources import DEMO_SOURCES, list_source_files

USER_SOURCE = "user"


def demo_tasks(config: IngestConfig, seed: int) -> list[FileTask]:
    raw = Path(config.data_dir) / "raw" if config.data_dir else raw_data_dir()
    tasks: list[FileTask] = []
    missing = []
    for name in config.sources:
        spec = DEMO_SOURCES[name]
        files = list_source_files(spec, raw)
        if not files:
            missing.append(f"{name} (package {spec.package})")
            continue
        budget_mb = config.source_mb.get(name, config.max_mb_per_source)
        if budget_mb is not None or config.max_files_per_source is not None:
            rng = random.Random(f"{seed}:{name}")
            rng.shuffle(files)
            chosen, total = [], 0
            for rel, path in files:
                size = path.stat().st_size
                if config.max_files_per_source is not None and len(chosen) >= config.max_files_per_source:
                    break
                if budget_mb is not None and chosen and total + size > budget_mb * 1e6:
                    break
                chosen.append((rel, path))
                total += size
            files = sorted(chosen)
        for rel, path in files:
            tasks.append(FileTask(name, str(path), rel, spec.kind, spec.license, spec.lang_hint(rel),
                                  path.stat().st_size))
    if missing:
        raise StageError(
            "ingest: demo sources not fetched: " + ", ".join(missing)
            + f". Run `bash infra/fetch_data.sh` (looked in {raw}), or read your own corpus with "
            "--set 'ingest.sources=[]' --set 'ingest.paths=[\"/path/to/corpus\"]'."
        )
    return tasks


UNLISTABLE = "unlistable"  # a folder that could not be listed: quarantined as unreadable, never skipped


def user_tasks(config: IngestConfig) -> list[FileTask]:
    tasks: list[FileTask] = []
    for entry in config.paths:
        for url, rel, size, error in expand_path(entry):
            if error is not None:  # the error rides in the license slot: a folder has no license
                tasks.append(FileTask(USER_SOURCE, url, rel, UNLISTABLE, error, None, 0))
            else:
                tasks.append(FileTask(USER_SOURCE, url, rel, kind_for_name(rel), "unknown", None, size))
    return tasks


def expand_path(entry: str) -> list[tuple[str, str, int, str | None]]:
    """(url, relative name, size, None) of each file a user path names (file, folder, glob or fsspec URL),
    and (url, relative name, 0, error) of each folder under it that could not be listed."""
    if "://" in entry and not entry.startswith("file://"):
        import fsspec

        fs, _, roots = fsspec.get_fs_token_paths(entry)
        out = []
        for root in roots:
            info = fs.info(root)
            files = fs.find(root, detail=True) if info["type"] == "directory" else {root: info}
            for path, detail in sorted(files.items()):
                rel = os.path.relpath(path, root) if info["type"] == "directory" else os.path.basename(path)
                out.append((fs.unstrip_protocol(path), rel, int(detail.get("size") or 0), None))
        if not out:
            raise StageError(f"ingest: {entry} matches no files")
        return out
    local = entry.removeprefix("file://")
    matches = sorted(glob.glob(local, recursive=True)) if any(c in local for c in "*?[") else [local]
    out = []
    for match in matches:
        path = Path(match)
        if path.is_dir():
            out += _walk(path)
        elif path.is_file() or path.is_symlink():
            out.append((str(path.absolute()), path.name, _size(path), None))
    if not out:
        raise StageError(f"ingest: {entry} matches no files")
    return out


def _walk(root: Path) -> list[tuple[str, str, int, str | None]]:
    """Files under ``root`` (symlinks too, dangling ones and links to folders included: they are quarantined
    as unreadable, not lost), and the folders that could not be listed, with the error."""
    found = []

    def unlistable(error: OSError) -> None:
        folder = Path(error.filename)
        found.append((str(folder.absolute()), folder.relative_to(root).as_posix() + "/", 0,
                      f"{error.strerror or error}"))

    for folder, dirs, files in os.walk(root, onerror=unlistable):
        here = Path(folder)
        links = [d for d in dirs if (here / d).is_symlink()]
        for name in files + links:
            if not name.startswith("."):
                file = here / name
                found.append((str(file.absolute()), file.relative_to(root).as_posix(), _size(file), None))
    return sorted(found)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def plan_files(config: IngestConfig, seed: int) -> list[FileTask]:
    return demo_tasks(config, seed) + user_tasks(config)


def plan_digest(tasks: list[FileTask]) -> str:
    """Content fingerprint of the planned files (remote files: URL, size and fs metadata)."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(f"{task.source}\0{task.relpath}\0{task.kind}\0{task.size}\0".encode())
        if "://" in task.url:
            digest.update(_remote_fingerprint(task.url).encode())
        else:
            try:
                digest.update(sha256_file(Path(task.url)).encode())
            except OSError as exc:  # it will be quarantined as unreadable; the error is its fingerprint
                digest.update(f"unreadable:{exc.strerror}".encode())
    return digest.hexdigest()


def _remote_fingerprint(url: str) -> str:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    return str({k: info.get(k) for k in ("size", "ETag", "etag", "md5", "mtime", "LastModified", "updated")})
