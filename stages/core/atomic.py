"""Atomic writes: a killed stage never leaves a half artifact a later stage could read,
and never leaves litter that nothing cleans up.

Outputs are written into a hidden sibling temp path and renamed into place only when
complete; rename is atomic on one filesystem. Each temp dir has an owner record beside
it (pid, host, the process's start time) and an entry under ``$LMFORGE_HOME/run/partial``:
the next write into the same folder removes temp dirs whose owner is gone, and
``lmforge gc`` finds the rest through the entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

OWNER_SUFFIX = ".owner.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename; the file gets the mode ``open`` would
    give it (0666 less the umask), like its siblings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _this_process() -> dict:
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def owner_alive(owner: dict) -> bool | None:
    """Whether the process that owns a temp dir still runs (None: it ran on another host, so we cannot tell)."""
    import psutil

    if owner.get("host") != socket.gethostname():
        return None
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["started"])) < 1e-2
    except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
        return False
    except psutil.AccessDenied:
        return True


def _partial_registry() -> Path:
    from stages.core.paths import lmforge_home

    return lmforge_home() / "run" / "partial"


@contextlib.contextmanager
def atomic_output_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp dir; on success it replaces ``final``, on failure it is removed.

    A previous complete ``final`` survives a failed attempt untouched. Temp dirs that killed writers
    left in the same folder are removed first.
    """
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    token = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{token}"
    owner = _this_process()
    tmp.mkdir()
    owner_file = Path(f"{tmp}{OWNER_SUFFIX}")
    owner_file.write_text(json.dumps(owner))
    entry = _partial_registry() / f"{token}.json"
    with contextlib.suppress(OSError):  # a read-only home must not stop the stage; gc then cannot find it
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(json.dumps({"path": str(tmp), **owner}))
    try:
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{token}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        owner_file.unlink(missing_ok=True)
        entry.unlink(missing_ok=True)


def stale_temps(parent: Path) -> list[Path]:
    """Temp dirs in ``parent`` whose writer is gone: its owner process died on this host, or (``.old-``) the
    swap it was part of finished. Temp dirs of live writers and of other hosts' writers are left alone."""
    found = []
    if not parent.is_dir():
        return found
    for entry in sorted(parent.iterdir()):
        name = entry.name
        if not name.startswith(".") or name.endswith(OWNER_SUFFIX):
            continue
        if ".tmp-" in name and entry.is_dir():
            owner_file = Path(f"{entry}{OWNER_SUFFIX}")
            try:
                owner = json.loads(owner_file.read_text())
            except (OSError, ValueError):
                continue  # being created this moment, or not ours
            if owner_alive(owner) is False:
                found.append(entry)
        elif ".old-" in name and entry.is_dir():
            final = parent / name[1:].rsplit(".old-", 1)[0]
            if final.exists():  # the new output is in place: the old one was only waiting to be deleted
                found.append(entry)
    return found


def remove_temp(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    Path(f"{path}{OWNER_SUFFIX}").unlink(missing_ok=True)
    token = path.name.rsplit("-", 1)[-1]
    (_partial_registry() / f"{token}.json").unlink(missing_ok=True)


def remove_stale_temps(parent: Path) -> list[Path]:
    """Remove the temp dirs killed writers left in ``parent``; returns them."""
    stale = stale_temps(parent)
    for path in stale:
        remove_temp(path)
    return stale


def registered_stale_temps() -> list[Path]:
    """Stale temp dirs anywhere, found through the registry (what ``lmforge gc`` removes); entries whose
    temp dir is already gone are dropped."""
    registry = _partial_registry()
    found: list[Path] = []
    if not registry.is_dir():
        return found
    for entry in sorted(registry.glob("*.json")):
        try:
            record = json.loads(entry.read_text())
            path = Path(record["path"])
        except (OSError, ValueError, KeyError):
            continue
        if not path.exists():
            entry.unlink(missing_ok=True)
        elif owner_alive(record) is False:
            found.append(path)
    return found
