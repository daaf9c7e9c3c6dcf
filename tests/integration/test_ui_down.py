"""`lmforge ui` starts (or finds) both UIs on 127.0.0.1; `lmforge down` stops what it started."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import free_port, last_json, run_cli

pytestmark = pytest.mark.integration


def _pids(home):
    return {p.stem: int(p.read_text()) for p in (home / "run").glob("*.pid")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ui_starts_both_servers_reuses_them_and_down_stops_them(home):
    ports = ["--set", f"engines.prefect.port={free_port()}", "--set", f"engines.mlflow.ui_port={free_port()}"]
    try:
        urls = last_json(run_cli(["ui", *ports], timeout=400).stdout)
        assert urls["prefect"].startswith("http://127.0.0.1:") and urls["mlflow"].startswith("http://127.0.0.1:")
        assert httpx.get(urls["prefect"] + "/api/health", timeout=10).status_code == 200
        assert httpx.get(urls["mlflow"] + "/health", timeout=10).status_code == 200
        pids = _pids(home)
        assert set(pids) == {"prefect", "mlflow"} and all(_alive(p) for p in pids.values())

        again = run_cli(["ui", *ports])
        assert last_json(again.stdout) == urls and "already running" in again.stderr
        assert _pids(home) == pids
    finally:
        stopped = last_json(run_cli(["down"]).stdout)["stopped"]
    assert len(stopped) == 2
    assert not any(_alive(p) for p in pids.values())
    assert _pids(home) == {}
    assert "nothing" in run_cli(["down"]).stderr
