"""The promotion gate on a real MLflow registry: the first model becomes production,
a worse one is refused (production stays), a better one replaces it, and ``lmforge
rollback`` moves production back."""

from __future__ import annotations

import pytest

from stages.core.tracking import Tracker, register_artifact
from stages.deploy import promotion
from tests.conftest import last_json, run_cli

pytestmark = pytest.mark.integration
NAME = "lmforge-gate-lm"


def quantize_run(tracker: Tracker, tmp_path, pass_rate: float, perplexity: float) -> str:
    """A finished quantize-like run with its chosen variant's figures, registered like the stage does."""
    run_id = tracker.start_run("quantize", {"lmforge.stage": "quantize", "lmforge.quantized_variant": "int8"})
    tracker.log_metrics(run_id, {"int8.pass_rate": pass_rate, "int8.perplexity": perplexity})
    folder = tmp_path / run_id / "int8"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    tracker.client.log_artifacts(run_id, str(folder), "int8")
    register_artifact(tracker, NAME, run_id, "int8", "latest-quantized")
    return run_id


def gate(tracker: Tracker, run_id: str, drop: float = 0.0, ppl: float = 0.05) -> promotion.Verdict:
    client = tracker.client
    candidate = promotion.version_of_run(client, NAME, run_id)
    current = promotion.production_version(client, NAME)
    verdict = promotion.judge(promotion.figures(client, candidate),
                              promotion.figures(client, current) if current else None,
                              str(current.version) if current else None, drop, ppl)
    if verdict.promote:
        promotion.promote(client, NAME, str(candidate.version), str(current.version) if current else None)
    return verdict


def test_gate_both_ways_and_rollback(home, tmp_path):
    tracker = Tracker("gate")
    first = gate(tracker, quantize_run(tracker, tmp_path, 0.40, 100.0))
    assert first.promote and first.reason == "no production model yet"
    assert str(tracker.client.get_model_version_by_alias(NAME, "production").version) == "1"

    worse = gate(tracker, quantize_run(tracker, tmp_path, 0.30, 100.0))
    assert not worse.promote and "pass rate 0.300 < production's 0.400" in worse.reason
    assert str(tracker.client.get_model_version_by_alias(NAME, "production").version) == "1"  # kept
    blurry = gate(tracker, quantize_run(tracker, tmp_path, 0.45, 120.0))
    assert not blurry.promote and "perplexity 120.00 > production's 100.00" in blurry.reason

    better = gate(tracker, quantize_run(tracker, tmp_path, 0.45, 101.0))
    assert better.promote
    assert str(tracker.client.get_model_version_by_alias(NAME, "production").version) == "4"

    out = last_json(run_cli(["rollback", "--name", NAME]).stdout)
    assert out == {"model": NAME, "from": "4", "to": "1"}
    assert str(tracker.client.get_model_version_by_alias(NAME, "production").version) == "1"
    again = run_cli(["rollback", "--name", NAME], check=False)  # v1 replaced nothing: a clear error
    assert again.returncode != 0 and "replaced no earlier production version" in again.stderr
