"""The promotion gate on a real MLflow registry, through ``promotion.decide`` (what the deploy stage
calls): the first model becomes production, a worse one is refused (production stays), one missing a
gated figure is refused (fail closed), a better one replaces it, and ``lmforge rollback`` moves
production back."""

from __future__ import annotations

import pytest

from stages.core.tracking import Tracker, register_artifact
from stages.deploy import promotion
from stages.deploy.config import GateConfig
from tests.conftest import last_json, run_cli

pytestmark = pytest.mark.integration
NAME = "lmforge-gate-lm"


def quantize_run(tracker: Tracker, tmp_path, pass_rate: float | None, perplexity: float | None,
                 lm_eval: dict[str, float] | None = None) -> str:
    """A finished quantize-like run with its chosen variant's figures, registered like the stage does."""
    run_id = tracker.start_run("quantize", {"lmforge.stage": "quantize", "lmforge.quantized_variant": "int8"})
    tracker.log_metrics(run_id, {f"int8.{k}": v for k, v in (("pass_rate", pass_rate), ("perplexity", perplexity))
                                 if v is not None})
    tracker.log_metrics(run_id, {f"int8.lm_eval.{k}": v for k, v in (lm_eval or {}).items()})
    folder = tmp_path / run_id / "int8"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    tracker.client.log_artifacts(run_id, str(folder), "int8")
    register_artifact(tracker, NAME, run_id, "int8", "latest-quantized")
    return run_id


def gate(tracker: Tracker, run_id: str, drop: float = 0.0, ppl: float = 0.05,
         lm_eval: dict[str, float] | None = None) -> promotion.Verdict:
    candidate = promotion.version_of_run(tracker.client, NAME, run_id)
    verdict, _ = promotion.decide(tracker.client, NAME, candidate,
                                  GateConfig(max_pass_rate_drop=drop, max_perplexity_increase=ppl,
                                             lm_eval=lm_eval or {}))
    return verdict


def production(tracker: Tracker) -> str:
    return str(tracker.client.get_model_version_by_alias(NAME, "production").version)


def test_a_first_candidate_without_its_figures_is_not_promoted(home, tmp_path):
    tracker = Tracker("gate-first")
    refused = gate(tracker, quantize_run(tracker, tmp_path, 0.40, None))
    assert not refused.promote and "no perplexity to gate on" in refused.reason
    assert promotion.production_version(tracker.client, NAME) is None


def test_gate_both_ways_and_rollback(home, tmp_path):
    tracker = Tracker("gate")
    first = gate(tracker, quantize_run(tracker, tmp_path, 0.40, 100.0))
    assert first.promote and first.reason == "no production model yet"
    assert production(tracker) == "1"

    worse = gate(tracker, quantize_run(tracker, tmp_path, 0.30, 100.0))
    assert not worse.promote and "pass rate 0.300 < production's 0.400" in worse.reason
    assert production(tracker) == "1"  # kept
    blurry = gate(tracker, quantize_run(tracker, tmp_path, 0.45, 120.0))
    assert not blurry.promote and "perplexity 120.00 > production's 100.00" in blurry.reason
    unmeasured = gate(tracker, quantize_run(tracker, tmp_path, 0.90, None))  # better pass rate, no perplexity
    assert not unmeasured.promote and "no perplexity to gate on" in unmeasured.reason
    nan = gate(tracker, quantize_run(tracker, tmp_path, float("nan"), 90.0))
    assert not nan.promote and "no pass_rate to gate on" in nan.reason
    assert production(tracker) == "1"

    better = gate(tracker, quantize_run(tracker, tmp_path, 0.45, 101.0))
    assert better.promote and better.reason == "within the gates of production v1"
    assert production(tracker) == "6"

    out = last_json(run_cli(["rollback", "--name", NAME]).stdout)
    assert out == {"model": NAME, "from": "6", "to": "1"}
    assert str(tracker.client.get_model_version_by_alias(NAME, "production").version) == "1"
    again = run_cli(["rollback", "--name", NAME], check=False)  # v1 replaced nothing: a clear error
    assert again.returncode != 0 and "replaced no earlier production version" in again.stderr


def test_the_gate_may_name_lm_eval_figures(home, tmp_path):
    """deploy.gate.lm_eval: a harness score may drop by its bound, a bits-per-byte figure rise by its bound
    (relative); a named figure missing on either side refuses (fail closed)."""
    tracker = Tracker("gate")
    bounds = {"language.pass": 0.05, "heldout_ppl.bits_per_byte": 0.02}
    scores = {"language.pass": 0.50, "heldout_ppl.bits_per_byte": 1.20}
    assert gate(tracker, quantize_run(tracker, tmp_path, 0.4, 100.0, scores), lm_eval=bounds).promote
    worse = gate(tracker, quantize_run(tracker, tmp_path, 0.4, 100.0, {**scores, "language.pass": 0.40}),
                 lm_eval=bounds)
    assert not worse.promote and "lm-eval language.pass 0.400 < production's 0.500 - 0.05" in worse.reason
    blurry = gate(tracker, quantize_run(tracker, tmp_path, 0.4, 100.0, {**scores, "heldout_ppl.bits_per_byte": 1.3}),
                  lm_eval=bounds)
    assert not blurry.promote and "lm-eval heldout_ppl.bits_per_byte 1.3 > production's 1.2 x 1.02" in blurry.reason
    unmeasured = gate(tracker, quantize_run(tracker, tmp_path, 0.4, 100.0), lm_eval=bounds)
    assert not unmeasured.promote and "no lm_eval.language.pass" in unmeasured.reason
    within = gate(tracker, quantize_run(tracker, tmp_path, 0.4, 100.0, {**scores, "language.pass": 0.46}),
                  lm_eval=bounds)
    assert within.promote and production(tracker) == "5"
