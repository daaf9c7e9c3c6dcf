"""Start and stop the Ray Serve application on 127.0.0.1 (or the host given), resolve
``models:/NAME@ALIAS`` to the registered folder it serves, and put that folder where the
serving replicas read it (object storage when nodes share no disk)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from stages.core.errors import StageError
from stages.deploy.config import ServerConfig

APP_NAME = "lmforge"
SERVE_FOLDER = "serve"  # under the object storage root: one copy of each served model
COPY_COMPLETE = ".lmforge-complete"  # written after the last file: a copy without it is re-uploaded


def resolve_model(uri: str, tracking_uri: str | None = None) -> tuple[Path, str, str]:
    """(local folder, registered name, version) of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder."""
    from stages.core.tracking import resolve_registered

    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_dir():
            raise StageError(f"--model: {uri} is neither models:/NAME@ALIAS nor a model folder")
        return path, path.name, "local"
    try:
        return resolve_registered(uri, tracking_uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types; the message says which
        raise StageError(f"--model: {uri} is not registered ({exc.__class__.__name__}: {exc})") from exc


def replica_location(model_dir: Path, storage_root: str | None, key: str | None = None) -> str:
    """Where Serve's replicas read the model: ``model_dir`` itself on local disk; with object storage, a copy at
    ``<storage_root>/serve/<key>``, uploaded once. ``key`` is the MLflow run that made the model (``lmforge gc``
    removes the copy with that run), else a digest of the folder's files. The copy stays while the model is
    served: a replica that Serve restarts later, on any node, reads it there (each replica fetches it through
    ``storage.fetched``)."""
    from stages.core import storage

    if storage_root is None:
        return str(model_dir)
    if key is None:
        from stages.core.digests import combined_digest, tree_digests

        key = "digest-" + combined_digest(tree_digests(model_dir))[:24]
    location = storage.join(storage_root, SERVE_FOLDER, key)
    if not storage.exists(storage.join(location, COPY_COMPLETE)):
        storage.upload_tree(model_dir, location)
        storage.write_text(storage.join(location, COPY_COMPLETE), "")
    return location


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(model_dir: Path | str, model_name: str, server: ServerConfig, *, timeout_s: float | None = None) -> str:
    """Deploy the app with ``server``'s settings (``deploy.server``; its port must be set, not 0) and wait for
    /health (``server.startup_timeout_s`` unless ``timeout_s``); returns the base URL. ``model_dir``: a folder,
    or the object-storage location of one (``replica_location``)."""
    from ray import serve

    from stages.core.quiet import quiet_third_party, verbose
    from stages.deploy.app import build

    quiet_third_party()  # again: importing Serve set its driver logger back to INFO
    # Serve's controller, proxy and replica INFO lines and one access-log line per request, unless --verbose
    logs = None if verbose() else {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": server.host, "port": server.port}, logging_config=logs)
    serve.run(build(model_dir, model_name, server), name=APP_NAME, route_prefix="/", blocking=False,
              logging_config=logs)
    url = f"http://{server.host}:{server.port}"
    timeout_s = timeout_s or server.startup_timeout_s
    deadline = time.time() + timeout_s
    last = "no answer"
    while time.time() < deadline:
        try:
            answer = httpx.get(f"{url}/health", timeout=5)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        else:
            if answer.status_code == 200:
                return url
            status = _json_or_empty(answer)
            last = status.get("reason", answer.text[:200])
            if status.get("status") == "failed":
                stop()
                raise StageError(f"the server at {url} could not load {model_dir}: {last}")
        time.sleep(0.5)
    raise StageError(f"the server did not answer {url}/health within {timeout_s:.0f} s (last: {last})")


def _json_or_empty(answer) -> dict:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def stop() -> None:
    from ray import serve

    serve.shutdown()
