"""``lmforge status``, ``compare``, ``cancel`` and ``gc``: looking after pipeline runs.

Tables go to stderr (rich), the last stdout line is JSON, as for every lmforge command.
The MLflow store is $MLFLOW_TRACKING_URI, else the SQLite store under LMFORGE_HOME.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from stages.core import names
from pipelines.cli_common import console, fail
from stages.core.errors import LmforgeError

STATE_STYLE = {"done": "green", "cached": "cyan", "running": "yellow", "pending": "dim", "failed": "red",
               "cancelled": "magenta", "lost": "red", "not run": "dim"}


def _client():
    from mlflow.tracking import MlflowClient

    from stages.core.tracking import default_tracking_uri

    return MlflowClient(default_tracking_uri())


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def figure_text(value: float | None) -> str:
    """Counts as integers with separators (99,003), float noise as 0, other figures to 4 significant digits
    without an exponent for ordinary magnitudes."""
    if value is None:
        return "-"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if abs(value) < 1e-9:
        return "0"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if 1e-4 <= abs(value) < 1e9:
        digits = max(0, 3 - math.floor(math.log10(abs(value))))
        return f"{value:,.{digits}f}"
    return f"{value:.4g}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def status(
    run_id: Annotated[Optional[str], typer.Argument(help="A pipeline run (MLflow id); default: the recent ones.",
                                                    show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many recent pipeline runs to list.")] = 10,
) -> None:
    """Show running and recent pipeline runs and the state of each stage.

    States: done, cached (reused), running, failed, cancelled, pending, not run; with each
    stage's MLflow run and duration. A running pipeline whose process died shows as LOST.
    """
    from pipelines import runs

    client = _client()
    try:
        found = [runs.get_pipeline_run(client, run_id)] if run_id else runs.recent_pipeline_runs(client, limit)
    except LmforgeError as exc:
        raise fail(exc) from None
    described = [runs.describe(client, r) for r in found]
    if not described:
        console.print(f"no pipeline runs in {client.tracking_uri} yet (`lmforge run` starts one)")
    for d in described:
        head = f"[bold]{d['name']}[/]  {d['pipeline_run_id']}  {d['state']}  started {_when(d['started'])}"
        if d["rerun_of"]:
            head += f"  rerun of {d['rerun_of']}"
        table = Table(title=head, title_justify="left", show_edge=False)
        for column in ("stage", "state", "MLflow run", "seconds"):
            table.add_column(column)
        for s in d["stages"]:
            style = STATE_STYLE.get(s["state"], "")
            table.add_row(s["stage"], f"[{style}]{s['state']}[/]", s["run_id"] or "-", _secs(s["duration_s"]))
        console.print(table)
        if d["error"]:
            console.print(f"  [red]{d['error']}[/]")
    typer.echo(json.dumps({"pipeline_runs": described}))


def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more pipeline runs (MLflow ids).", show_default=False)],
    all_: Annotated[bool, typer.Option("--all", help="Every rolled-up figure, not only the key ones.")] = False,
) -> None:
    """Compare pipeline runs side by side, better values marked, and show the config that differs.

    Key figures: funnel counts, losses, pass rates, reward, quantized perplexity, serving
    latency, durations (--all: every figure the stages rolled up onto the pipeline run).
    """
    from pipelines import runs

    try:
        result = runs.compare(_client(), run_ids, all_)
    except LmforgeError as exc:
        raise fail(exc) from None
    table = Table(title="figures (* = better; reused = a cached stage, shown with the run that computed it)",
                  title_justify="left", show_edge=False)
    table.add_column("metric", overflow="fold")  # a long name wraps, never cut
    for r in result["runs"]:
        table.add_column(f"{r['name']}\n{r['pipeline_run_id'][:12]}", justify="right", overflow="fold")
    for row in result["metrics"]:
        cells = []
        for k, value in enumerate(row["values"]):
            text = figure_text(value)
            if row["reused"][k]:
                text += " (reused)"
            cells.append(f"[bold green]{text} *[/]" if row["best"] and k in row["best"] else text)
        table.add_row(row["metric"], *cells)
    console.print(table)
    if result["differing_config"]:
        diff = Table(title="config that differs", title_justify="left", show_edge=False)
        diff.add_column("field")
        for r in result["runs"]:
            diff.add_column(r["pipeline_run_id"][:12])
        for row in result["differing_config"]:
            diff.add_row(row["param"], *["-" if v is None else str(v) for v in row["values"]])
        console.print(diff)
    else:
        console.print("config: identical")
    typer.echo(json.dumps(result))


def cancel(
    run_id: Annotated[str, typer.Argument(help="The pipeline run to cancel (MLflow id).", show_default=False)],
    wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for the run to stop.")] = 120,
) -> None:
    """Cancel a running pipeline run and stop its Ray work.

    Its process gets SIGUSR1: the running stage's MLflow run ends KILLED, nothing half-written
    is kept, the process's Ray tasks and actors are shut down; the Prefect flow run is marked
    Cancelled. `lmforge resume RUN_ID` restarts it at that stage.
    """
    import os

    from pipelines import runs

    client = _client()
    try:
        run = runs.get_pipeline_run(client, run_id)
    except LmforgeError as exc:
        raise fail(exc) from None
    state = runs.pipeline_state(run)
    if state != "RUNNING":
        console.print(f"pipeline run {run_id} is {state}: nothing to cancel")
        typer.echo(json.dumps({"pipeline_run_id": run_id, "cancelled": False, "state": state}))
        return
    alive = runs.process_alive(run)
    stopped = False
    if alive:
        from pipelines.flow import CANCEL_SIGNAL

        pid = int(run.data.tags[names.TAG_PID])
        os.kill(pid, CANCEL_SIGNAL)
        console.print(f"sent {CANCEL_SIGNAL.name} to pid {pid}; waiting up to {wait_s:.0f} s for it to stop")
        deadline = time.time() + wait_s
        while time.time() < deadline and runs.process_alive(run):
            time.sleep(0.5)
        stopped = not runs.process_alive(run)
    else:
        console.print("the run's process is not on this machine: asking Prefect to cancel its flow run "
                      "(a worker stops it)")
    prefect_state = _cancel_flow_run(run, final=stopped or alive is False)
    if alive is False:  # its process is gone: close what it left open
        client.set_tag(run_id, names.TAG_ERROR, "cancelled after its process was lost")
        client.set_terminated(run_id, "KILLED")
    state = runs.pipeline_state(client.get_run(run_id))
    console.print(f"pipeline run {run_id}: {state}; Prefect flow run: {prefect_state}")
    typer.echo(json.dumps({"pipeline_run_id": run_id, "cancelled": state == "CANCELLED", "state": state,
                           "prefect_state": prefect_state}))


def _cancel_flow_run(run, final: bool) -> str | None:
    """Mark the Prefect flow run Cancelled (or Cancelling, for a worker to act on) over the REST API."""
    import httpx

    api = run.data.tags.get(names.TAG_PREFECT_API)
    flow_run_id = run.data.tags.get(names.TAG_PREFECT_FLOW_RUN)
    if not api or not flow_run_id:
        return None
    kind, name = ("CANCELLED", "Cancelled") if final else ("CANCELLING", "Cancelling")
    try:
        httpx.post(f"{api}/flow_runs/{flow_run_id}/set_state", timeout=10, json={
            "state": {"type": kind, "name": name, "message": "lmforge cancel"}, "force": True})
        return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        console.print(f"[yellow]Prefect at {api} did not answer ({type(exc).__name__}); the MLflow run is "
                      "cancelled all the same[/]")
        return None


def gc(
    keep: Annotated[int, typer.Option("--keep", help="Keep the stage runs of this many most recent pipeline runs.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go and how much it would free.")] = False,
) -> None:
    """Free disk: remove what no alias and no recent or running pipeline run needs.

    That is stage-run artifacts, Ray Train checkpoints, stage work dirs and spill files of dead
    Ray sessions. Removed stage runs are deleted in MLflow, so the cache recomputes them if
    they are asked for again.
    """
    from pipelines import gc as collector

    client = _client()
    try:
        result = collector.plan(client, keep)
    except LmforgeError as exc:
        raise fail(exc) from None
    by_kind: dict[str, list[int]] = {}
    for item in result.delete:
        by_kind.setdefault(item.kind, [0, 0])
        by_kind[item.kind][0] += 1
        by_kind[item.kind][1] += item.bytes
    table = Table(title=f"{'would remove' if dry_run else 'removed'} (keeping {result.kept_runs} needed stage runs)",
                  title_justify="left", show_edge=False)
    for column in ("what", "items", "MB"):
        table.add_column(column, justify="right" if column != "what" else "left")
    for kind, (count, size) in sorted(by_kind.items()):
        table.add_row(kind, str(count), f"{size / 1e6:,.1f}")
    if not dry_run:
        collector.apply(client, result)
    console.print(table)
    console.print(f"{'would free' if dry_run else 'freed'} {result.bytes / 1e6:,.1f} MB")
    typer.echo(json.dumps({"dry_run": dry_run, "freed_bytes": 0 if dry_run else result.bytes,
                           "would_free_bytes": result.bytes,
                           "removed": {k: {"items": c, "bytes": b} for k, (c, b) in by_kind.items()},
                           "removed_runs": [i.run_id for i in result.delete if i.run_id],
                           "items": [{"kind": i.kind, "path": i.location or (str(i.path) if i.path else None), "run_id": i.run_id,
                                      "bytes": i.bytes} for i in result.delete]}))


def dashboard(
    run: Annotated[Optional[str], typer.Option("--run", help="Pipeline run to open on (default: the newest).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the page to this HTML file and exit.")] = None,
    host: Annotated[str, typer.Option(help="Bind address when serving.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port when serving.")] = 8050,
    limit: Annotated[int, typer.Option("--limit", help="Recent pipeline runs offered by the run picker.")] = 10,
) -> None:
    """The pipeline dashboard: DAG, data funnel, training curves, pass rates, quantization, serving.

    Built from MLflow as one self-contained HTML page (plotly): written with --out, else
    served on 127.0.0.1 (rebuilt on each load) until Ctrl-C. The run picker switches runs
    and overlays a second one to compare.
    """
    from dashboards.data import collect
    from dashboards.page import render, write

    client = _client()
    try:
        data = collect(client, run, limit)
    except LmforgeError as exc:
        raise fail(exc) from None
    if out is not None:
        path = write(data, out)
        console.print(f"dashboard of {len(data['runs'])} pipeline run(s) written to {path}")
        typer.echo(json.dumps({"path": str(path), "runs": [r["id"] for r in data["runs"]]}))
        return
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404, "the dashboard is at /")
                return
            body = render(collect(client, run, limit)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet: the terminal shows the URL, not each request
            pass

    server = ThreadingHTTPServer((host, port), Page)
    url = f"http://{host}:{server.server_address[1]}/"
    console.print(f"dashboard at {url} (Ctrl-C stops it)")
    typer.echo(json.dumps({"url": url}))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
