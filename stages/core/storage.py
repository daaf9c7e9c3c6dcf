"""Where Ray tasks hand files to each other: a local folder, or object storage that every node reaches
when nodes share no disk.

A location is a string: a local path, or ``s3://bucket/key``. S3 goes through pyarrow's filesystem
layer, which reads the endpoint and credentials the way every S3 client does (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so a task on a worker node opens
the same location with its own node's settings and nothing is passed along with the task. Local
paths keep Python's own file calls.

Every write is atomic: it goes to a temporary name first and is renamed (S3: moved) into place when
complete, so a killed or retried writer never leaves half a file under the real name. An S3 failure
becomes a ``StorageError`` naming the endpoint, and ``check_storage`` turns wrong credentials or a
missing bucket into a one-line configuration error before any work starts.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from stages.core.errors import ConfigError, StageError

S3 = "s3://"
ENV_STORAGE = "LMFORGE_STORAGE"
# the environment an S3 client follows
S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


class StorageError(StageError):
    """Object storage failed under a running stage (unreachable, refused, ...)."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(S3)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or an S3 URI alike."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def name_of(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


CHUNK = 1 << 23  # bytes per read or write of a streamed object: large, since small reads of an S3 stream are slow


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def endpoint() -> str:
    return _endpoint_url() or "AWS S3"


@functools.cache
def _s3_filesystem(endpoint_url: str | None, key: str | None, secret: str | None, region: str | None,
                   quick: bool = False):
    from pyarrow import fs as pafs

    options = {"region": region or "us-east-1"}
    if key and secret:
        options.update(access_key=key, secret_key=secret)
    if endpoint_url:
        options["endpoint_override"] = endpoint_url
        options["scheme"] = "https" if endpoint_url.startswith("https") else "http"
    # bounded waits, so that a stopped or stuck server fails the stage instead of hanging it (the check before
    # any work waits less)
    options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=1 if quick else 3)
    options["connect_timeout"] = 5
    options["request_timeout"] = 15 if quick else 60
    return pafs.S3FileSystem(**options)


def _s3(location: str, quick: bool = False) -> tuple[object, str]:
    """(pyarrow S3 filesystem, bucket/key) for an ``s3://`` location."""
    fs = _s3_filesystem(_endpoint_url(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"),
                        os.environ.get("AWS_REGION"), quick)
    return fs, location[len(S3):].rstrip("/")


@contextlib.contextmanager
def _named(location: str) -> Iterator[None]:
    """Turn pyarrow's S3 errors into one line that names the endpoint and the object."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if not is_remote(location):
            raise
        detail = str(exc).split(" (Request ID")[0]
        raise StorageError(f"object storage at {endpoint()} failed on {location}: {detail}") from exc


class RangeReader:
    """Reads parts of one file: a local handle, or ranged reads of an S3 object."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._local = None if is_remote(self.location) else open(self.location, "rb")
        self._remote = None
        if self._local is None:
            fs, path = _s3(self.location)
            with _named(self.location):
                self._remote = fs.open_input_file(path)

    def read_at(self, start: int, size: int) -> bytes:
        if self._local is not None:
            self._local.seek(start)
            return self._local.read(size)
        with _named(self.location):
            return self._remote.read_at(size, start)

    def close(self) -> None:
        (self._local or self._remote).close()

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_bytes(location: str | Path) -> bytes:
    location = str(location)
    if not is_remote(location):
        return Path(location).read_bytes()
    buffer = io.BytesIO()  # not readall(): it reads an S3 stream in small pieces
    copy_to(location, buffer)
    return buffer.getvalue()


def copy_to(location: str | Path, handle: IO[bytes]) -> None:
    """Stream a file's bytes into an open binary handle."""
    location = str(location)
    if not is_remote(location):
        with open(location, "rb") as src:
            shutil.copyfileobj(src, handle, CHUNK)
        return
    fs, path = _s3(location)
    with _named(location), fs.open_input_stream(path) as src:
        while chunk := src.read(CHUNK):
            handle.write(chunk)


@contextlib.contextmanager
def open_text(location: str | Path) -> Iterator[IO[str]]:
    """A text file to read line by line (S3: streamed)."""
    location = str(location)
    if not is_remote(location):
        with open(location, encoding="utf-8") as handle:
            yield handle
        return
    fs, path = _s3(location)
    with _named(location), fs.open_input_stream(path) as raw:
        yield _Lines(raw, location)


class _Lines:
    """Lines of an S3 object, read in large chunks (Python's buffered text layer over pyarrow's stream
    reads it in small pieces: 73 s for a 38 MB shard against 0.39 s in chunks, bench/README.md)."""

    def __init__(self, raw, location: str):
        self.raw, self.location = raw, location

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        rest = ""
        while True:
            with _named(self.location):
                chunk = self.raw.read(CHUNK)
            text = rest + decoder.decode(chunk, final=not chunk)
            lines = text.split("\n")
            rest = lines.pop()
            for line in lines:
                yield line + "\n"
            if not chunk:
                break
        if rest:
            yield rest

    def read(self) -> str:
        return "".join(self)


@contextlib.contextmanager
def open_output(location: str | Path, text: bool = True) -> Iterator[IO]:
    """A new file that appears under ``location`` only once it is complete."""
    location = str(location)
    token = uuid.uuid4().hex[:8]
    if not is_remote(location):
        final = Path(location)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{token}.tmp")
        try:
            with open(temporary, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
                yield handle
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        return
    fs, path = _s3(location)
    parent, name = path.rsplit("/", 1)
    temporary = f"{parent}/.{name}.{token}.tmp"
    with _named(location):
        raw = fs.open_output_stream(temporary)
    try:
        if text:
            wrapper = io.TextIOWrapper(io.BufferedWriter(raw, 1 << 20), encoding="utf-8")
            yield wrapper
            with _named(location):
                wrapper.close()
        else:
            yield raw
            with _named(location):
                raw.close()
        with _named(location):
            fs.move(temporary, path)
    except BaseException:
        # an S3 upload that is never closed hangs the interpreter at exit: close it, then drop the object
        with contextlib.suppress(Exception):
            raw.close()
        with contextlib.suppress(Exception):
            fs.delete_file(temporary)
        raise


def write_bytes(location: str | Path, data: bytes) -> None:
    with open_output(location, text=False) as handle:
        handle.write(data)


def write_text(location: str | Path, text: str) -> None:
    with open_output(location) as handle:
        handle.write(text)


def exists(location: str | Path) -> bool:
    location = str(location)
    if not is_remote(location):
        return Path(location).exists()
    from pyarrow import fs as pafs

    fs, path = _s3(location)
    with _named(location):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def _entries(directory: str) -> list[tuple[str, bool]]:
    """(name, is a folder) of what is directly in ``directory``; none if it does not exist."""
    if not is_remote(directory):
        base = Path(directory)
        return [(p.name, p.is_dir()) for p in base.iterdir()] if base.is_dir() else []
    from pyarrow import fs as pafs

    fs, path = _s3(directory)
    with _named(directory):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [(info.base_name, info.type == pafs.FileType.Directory) for info in infos]


def list_dirs(directory: str | Path, prefix: str = "") -> list[str]:
    """The folders directly in ``directory`` whose names start with ``prefix``, sorted."""
    names = sorted(name for name, is_dir in _entries(str(directory)) if is_dir and name.startswith(prefix))
    return [join(directory, n) for n in names]


def pyarrow_filesystem(location: str) -> tuple[object, str]:
    """(pyarrow filesystem, path in it) of an ``s3://`` location: what Ray Train's ``storage_filesystem`` and
    ``Checkpoint(path, filesystem)`` take."""
    return _s3(location)


def size(location: str | Path) -> int:
    location = str(location)
    if not is_remote(location):
        return Path(location).stat().st_size
    fs, path = _s3(location)
    with _named(location):
        return fs.get_file_info(path).size


def upload_tree(local: Path, location: str | Path) -> None:
    """A local file, or a local folder with everything under it, copied to ``location``."""
    if local.is_file():
        upload(local, location)
        return
    for item in sorted(local.rglob("*")):
        if item.is_file():
            upload(item, join(location, *item.relative_to(local).parts))


_fetched: dict[str, Path] = {}
FETCHED_PREFIX = "lmforge-fetched-"


@functools.cache
def _fetch_root() -> Path:
    """This process's folder for copies (``lmforge-fetched-<pid>-...`` in the temp dir), made on first use. It goes
    when the process exits; a process killed without an exit leaves it, and the next process on the node that
    fetches anything removes it (``sweep_fetched``)."""
    import atexit
    import tempfile

    sweep_fetched(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=f"{FETCHED_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def sweep_fetched(temp: Path) -> list[Path]:
    """Remove the copy folders under ``temp`` whose process is gone; returns them. (A reused pid keeps a dead
    process's folder until that pid is free again: never a live process's copy removed.)"""
    import psutil

    removed = []
    for folder in temp.glob(f"{FETCHED_PREFIX}*"):
        pid = folder.name[len(FETCHED_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def fetched(location: str | Path) -> Path:
    """A local path to read ``location`` (a file, or a folder with everything under it) at: the path itself on
    local disk; on object storage a copy in this process's temporary folder, made once per process (a Ray worker
    on a node that shares no disk with the driver reads the driver's inputs so)."""
    location = str(location)
    if not is_remote(location):
        return Path(location)
    if location not in _fetched:
        from pyarrow import fs as pafs

        local = _fetch_root() / uuid.uuid4().hex[:8] / name_of(location)
        fs, path = _s3(location)
        with _named(location):
            kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            download(location, local)
        elif kind == pafs.FileType.NotFound:
            raise StorageError(f"object storage at {endpoint()}: {location} does not exist")
        else:
            base = location.rstrip("/") + "/"
            for item in list_tree(location):
                download(item, local.joinpath(*item[len(base):].split("/")))
        _fetched[location] = local
    return _fetched[location]


def list_files(directory: str | Path, suffix: str = "", prefix: str = "") -> list[str]:
    """The files directly in ``directory`` whose names start with ``prefix`` and end with ``suffix``,
    sorted by name (temporary files left out); none if it does not exist."""
    names = sorted(name for name, is_dir in _entries(str(directory))
                   if not is_dir and name.startswith(prefix) and name.endswith(suffix) and not name.startswith("."))
    return [join(directory, n) for n in names]


def _files_under(directory: str | Path) -> dict[str, int]:
    """{location: bytes} of every file under ``directory``, at any depth (none if it does not exist)."""
    directory = str(directory)
    if not is_remote(directory):
        base = Path(directory)
        return {str(p): p.stat().st_size for p in base.rglob("*") if p.is_file()} if base.is_dir() else {}
    from pyarrow import fs as pafs

    fs, path = _s3(directory)
    with _named(directory):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return {S3 + info.path: info.size or 0 for info in infos if info.type == pafs.FileType.File}


def list_tree(directory: str | Path) -> list[str]:
    """Every file under ``directory``, at any depth, sorted (none if it does not exist)."""
    return sorted(_files_under(directory))


def tree_bytes(directory: str | Path) -> int:
    """The bytes of every file under ``directory``, at any depth (0 if it does not exist)."""
    return sum(_files_under(directory).values())


def remove(location: str | Path) -> None:
    """Remove a file if it is there."""
    location = str(location)
    if not is_remote(location):
        with contextlib.suppress(FileNotFoundError):
            Path(location).unlink()
        return
    fs, path = _s3(location)
    with _named(location), contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def remove_tree(directory: str | Path) -> None:
    """Remove a folder and everything under it, if it is there."""
    directory = str(directory)
    if not is_remote(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return
    fs, path = _s3(directory)
    with _named(directory), contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def download(location: str | Path, local: Path) -> Path:
    """A local copy of ``location`` at ``local`` (a local location is copied too, so callers may change it)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "wb") as dst:
        copy_to(location, dst)
    return local


def move_to_local(location: str | Path, local: Path) -> None:
    """Move a file from the work location to a local path (a rename on local disk)."""
    if not is_remote(location):
        os.replace(location, local)
        return
    download(location, local)
    remove(location)


def upload(local: Path, location: str | Path) -> None:
    with open(local, "rb") as src, open_output(location, text=False) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def configured_storage(setting: str | None = None) -> str | None:
    """The object storage the config (``engines.storage``) or ``LMFORGE_STORAGE`` names, or None (local)."""
    value = setting or os.environ.get(ENV_STORAGE) or None
    if value is not None and not is_remote(value):
        raise ConfigError(f"engines.storage: {value!r} is not an s3:// URI (leave it null for local disk)")
    return value


def check_storage(uri: str) -> None:
    """Fail with one line, before any work, if ``uri``'s bucket is missing or the credentials are refused."""
    from pyarrow import fs as pafs

    bucket = uri[len(S3):].split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"engines.storage: {uri!r} names no bucket (s3://BUCKET/prefix)")
    fs, path = _s3(uri, quick=True)
    probe = f"{path}/.lmforge-check-{uuid.uuid4().hex[:8]}"
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ConfigError(f"engines.storage {uri}: object storage at {endpoint()}: bucket {bucket!r} does not "
                              f"exist (create it first; infra/team/start.sh creates lmforge's)")
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        with fs.open_output_stream(probe) as handle:
            handle.write(b"ok")
        fs.delete_file(probe)
    except OSError as exc:
        text = str(exc)
        if "NO_SUCH_BUCKET" in text or "does not exist" in text:
            why = f"bucket {bucket!r} does not exist"
        elif any(code in text for code in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY",
                                           "InvalidAccessKeyId", "AccessDenied")):
            why = "the credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        elif "Connection refused" in text or "Could not connect" in text or "Couldn't connect" in text:
            why = "nothing answers there (AWS_ENDPOINT_URL)"
        elif "NETWORK_CONNECTION" in text or "curlCode" in text or "imed out" in text:
            why = f"it did not answer in time ({text.split(' (Request ID')[0]})"
        else:
            why = text.split(" (Request ID")[0]
        raise ConfigError(f"engines.storage {uri}: object storage at {endpoint()}: {why}") from exc
