"""Start and stop the Ray Serve application on 127.0.0.1 (or the host given), and resolve
``models:/NAME@ALIAS`` to the registered folder it serves."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from stages.core.errors import StageError
from stages.deploy.config import ServerConfig

APP_NAME = "lmforge"


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


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(model_dir: Path, model_name: str, server: ServerConfig, *, timeout_s: float | None = None) -> str:
    """Deploy the app with ``server``'s settings (``deploy.server``; its port must be set, not 0) and wait for
    /health (``server.startup_timeout_s`` unless ``timeout_s``); returns the base URL."""
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
