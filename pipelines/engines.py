"""The embedded engines: a local Prefect server and the MLflow UI, started on demand.

Servers bind 127.0.0.1 by default (neither has auth). A server that already answers
is reused, never restarted; one lmforge starts is recorded by pid in
``$LMFORGE_HOME/run`` so that ``lmforge down`` stops exactly what lmforge started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import LmforgeError
from stages.core.paths import lmforge_home, run_dir
from stages.core.tracking import default_artifact_root, default_tracking_uri

log = logging.getLogger("lmforge.engines")


@dataclass
class Server:
    name: str
    url: str  # what a browser opens
    health_url: str
    started: bool  # by this call (False: found running)


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _pid_file(name: str) -> Path:
    return run_dir() / f"{name}.pid"


def _start(name: str, cmd: list[str], env: dict[str, str], health_url: str, timeout: float) -> None:
    log_path = run_dir() / f"{name}.log"
    log.info("starting %s: %s (log: %s)", name, " ".join(cmd), log_path)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(name).write_text(str(proc.pid))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _healthy(health_url):
            log.info("%s is healthy (%.0f s)", name, timeout - (deadline - time.time()))
            return
        if proc.poll() is not None:
            _pid_file(name).unlink(missing_ok=True)
            raise LmforgeError(f"{name} exited with code {proc.returncode} while starting; "
                               f"last log lines:\n{_tail(log_path)}")
        time.sleep(0.5)
    raise LmforgeError(f"{name} did not answer {health_url} within {timeout:.0f} s; log: {log_path}\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prefect_home() -> Path:
    return lmforge_home() / "prefect"


def prefect_env() -> dict[str, str]:
    """Settings for our Prefect client and server: own home, no analytics, our loggers shown."""
    return {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(prefect_home())),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "lmforge",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }


def ensure_prefect(host: str, port: int, api_url: str | None, timeout: float) -> Server:
    """Use $PREFECT_API_URL / ``api_url`` if given, else the local server (starting it if needed)."""
    url = os.environ.get("PREFECT_API_URL") or api_url
    if url:
        health = url.rstrip("/") + "/health"
        if not _healthy(health, timeout=10):
            raise LmforgeError(f"Prefect API {url} does not answer {health}")
        return Server("prefect", url.removesuffix("/api"), health, started=False)
    url = f"http://{host}:{port}/api"
    health = f"{url}/health"
    if _healthy(health):
        return Server("prefect", f"http://{host}:{port}", health, started=False)
    env = {**os.environ, **prefect_env(), "PREFECT_UI_API_URL": url}
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    cmd = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
    _start("prefect", cmd, env, health, timeout)
    return Server("prefect", f"http://{host}:{port}", health, started=True)


def ensure_mlflow_ui(host: str, port: int) -> Server:
    """The MLflow UI over the same store the pipeline writes (SQLite by default)."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env_uri.startswith("http"):
        return Server("mlflow", env_uri, env_uri.rstrip("/") + "/health", started=False)
    base = f"http://{host}:{port}"
    if _healthy(f"{base}/health"):
        return Server("mlflow", base, f"{base}/health", started=False)
    root = default_artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [_bin("mlflow"), "server", "--backend-store-uri", default_tracking_uri(),
           "--default-artifact-root", root.as_uri(), "--host", host, "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    _start("mlflow", cmd, env, f"{base}/health", timeout=120)
    return Server("mlflow", base, f"{base}/health", started=True)


def stop_started() -> list[str]:
    """Stop every server lmforge started (by pid file); returns what was stopped."""
    stopped = []
    for pid_file in sorted(run_dir().glob("*.pid")):
        name = pid_file.stem
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid_file.unlink(missing_ok=True)
            continue
        if _terminate(pid):
            stopped.append(f"{name} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, grace: float = 15.0) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
