"""A third-party stage, installed as a package with an ``lmforge.stages`` entry point (the example of
docs/writing-a-stage.md): it gets its config section and schema, runs standalone, and runs in a flow
after the built-in stage its input names, with its figures rolled up and its Prefect edge drawn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, last_json, prefect_edges, run_cli

PLUGIN = REPO / "tests" / "plugins" / "lmforge-example-stage"
TINY = REPO / "pipelines" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """pip installs the plugin's own pyproject (a copy: builds leave files behind) into a folder that only this
    module's lmforge processes see, so the other tests' DAG stays the built-in one."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(PLUGIN, source)
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, timeout=300)
    assert (target / "lmforge_example_stage-0.1.0.dist-info" / "entry_points.txt").exists()
    return {"PYTHONPATH": str(target)}


def test_the_plugin_has_a_config_section_and_a_schema(plugin_env):
    schema = json.loads(run_cli(["config", "schema"], env=plugin_env).stdout)
    assert "doc_lengths" in schema["properties"]
    fields = schema["$defs"]["DocLengthsConfig"]["properties"]
    assert set(fields) == {"buckets", "short_chars"}
    bad = run_cli(["config", "show", "--config", str(TINY), "--set", "doc_lengths.short_chars=0"], env=plugin_env,
                  check=False)
    assert bad.returncode == 2 and "doc_lengths.short_chars" in bad.stderr
    plain = json.loads(run_cli(["config", "schema"]).stdout)  # without the package: no such section
    assert "doc_lengths" not in plain["properties"]


def test_the_plugin_runs_standalone(plugin_env, home, tmp_path):
    docs = tmp_path / "docs.jsonl"
    texts = ["short", "x" * 500, "y" * 5000, "z" * 50_000]
    docs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    summary = last_json(run_cli(["stage", "doc_lengths", "--input", str(docs), "--output", str(out),
                                 "--set", "doc_lengths.short_chars=1000"], env=plugin_env).stdout)
    assert summary["counts"] == {"docs": 4, "unreadable": 0}
    lengths = json.loads((out / "lengths.json").read_text())
    assert lengths["histogram"] == {"le_100": 1, "le_1000": 1, "le_10000": 1, "gt_10000": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "doc_lengths" and manifest["config"]["short_chars"] == 1000
    assert manifest["metrics"]["short_share"] == 0.5


def test_the_plugin_runs_in_a_flow_after_ingest(plugin_env, home, prefect_server):
    args = ["run", "--config", str(TINY), "--until", "doc_lengths",
            "--set", f"engines.prefect.port={prefect_server['port']}"]
    summary = last_json(run_cli(args, env=plugin_env).stdout)
    assert list(summary["stages"]) == ["ingest", "doc_lengths"]  # --until: the stage and what it reads from
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(summary["stages"]["doc_lengths"])
    assert run.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
    ingest = client.get_run(summary["stages"]["ingest"])
    pipeline = client.get_run(summary["pipeline_run_id"]).data.metrics
    assert pipeline["doc_lengths.docs"] == ingest.data.metrics["count.kept"]
    assert 0 < pipeline["doc_lengths.mean_chars"]
    edges = prefect_edges(prefect_server["api"], summary["prefect_flow_run_id"])
    assert edges == {"ingest": [], "doc_lengths": ["ingest"]}
    compared = last_json(run_cli(["compare", summary["pipeline_run_id"], summary["pipeline_run_id"]],
                                 env=plugin_env).stdout)
    shown = {row["metric"]: row["better"] for row in compared["metrics"]}
    assert shown["doc_lengths.short_share"] == "min" and "doc_lengths.mean_chars" in shown  # its key figures
    assert "doc_lengths.bucket.le_100" not in shown  # declared, not key
