"""The promotion gate and the ``production`` alias: which registered version a quantize
run produced, the eval figures of any version, the gate's decision, and rollback.

The gate fails closed: a figure it compares that either side lacks (or that is NaN) is a
refusal with the reason, never a pass; ``decide`` is the whole decision, and the deploy
stage and the tests both call it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stages.core import names
from stages.core.errors import StageError

GATED = ("pass_rate", "perplexity")  # what the gate compares, in this order

PRODUCTION = names.PRODUCTION
PREVIOUS_TAG = names.TAG_PREVIOUS_PRODUCTION


@dataclass
class Verdict:
    promote: bool
    reason: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    production_version: str | None


def registry_name(pipeline: str) -> str:
    return names.registered_model(pipeline, "lm")


def version_of_run(client, name: str, run_id: str):
    """The version of ``name`` registered from ``run_id`` (the quantize run's chosen variant)."""
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if not versions:
        raise StageError(f"deploy: run {run_id} registered no version of {name}")
    return max(versions, key=lambda v: int(v.version))


def figures(client, version) -> dict[str, float]:
    """pass_rate and perplexity of a version, from the quantize run that registered it."""
    run = client.get_run(version.run_id)
    variant = run.data.tags.get(names.TAG_QUANTIZED_VARIANT)
    metrics = run.data.metrics
    if variant is None:  # a policy registered by sft/ppo/dpo: its own held-out pass rate
        key = f"{run.data.tags.get(names.TAG_STAGE, '')}.pass_rate"
        return {"pass_rate": metrics[key]} if key in metrics else {}
    found = {k: metrics[f"{variant}.{k}"] for k in ("pass_rate", "perplexity") if f"{variant}.{k}" in metrics}
    prefix = f"{variant}.lm_eval."  # lm-evaluation-harness on the same variant
    found.update({f"lm_eval.{k[len(prefix):]}": v for k, v in metrics.items() if k.startswith(prefix)})
    return found


LOWER_IS_BETTER = ("perplexity", "bits_per_byte")  # lm-eval metric names (word_/byte_perplexity, bits_per_byte)


def lm_eval_problems(candidate: dict[str, float], current: dict[str, float], bounds: dict[str, float]) -> list[str]:
    """Each named lm-eval figure against production's: a score may drop by its bound, a perplexity-like figure
    rise by its bound (relative)."""
    problems = []
    for name, bound in bounds.items():
        new, old = candidate[f"lm_eval.{name}"], current[f"lm_eval.{name}"]
        if name.endswith(LOWER_IS_BETTER):
            if new > old * (1 + bound):
                problems.append(f"lm-eval {name} {new:.4g} > production's {old:.4g} x {1 + bound:.2f}")
        elif new < old - bound:
            problems.append(f"lm-eval {name} {new:.3f} < production's {old:.3f} - {bound}")
    return problems


def production_version(client, name: str):
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except Exception:  # noqa: BLE001 - no alias yet: MLflow raises RestException
        return None


def judge(candidate: dict[str, float], current: dict[str, float] | None, current_version: str | None,
          max_pass_rate_drop: float, max_perplexity_increase: float,
          gated: tuple[str, ...] = GATED, lm_eval: dict[str, float] | None = None) -> Verdict:
    """Promote only when every gated figure is there on both sides and within its bound."""
    lm_eval = lm_eval or {}
    gated = (*gated, *(f"lm_eval.{name}" for name in lm_eval))
    def known(figures: dict[str, float], key: str) -> bool:
        value = figures.get(key)
        return value is not None and not math.isnan(value)

    missing = [k for k in gated if not known(candidate, k)]
    if missing:
        return Verdict(False, f"the candidate has no {', '.join(missing)} to gate on: refused (fail closed)",
                       candidate, current, current_version)
    if current is None:
        return Verdict(True, "no production model yet", candidate, None, None)
    missing = [k for k in gated if not known(current, k)]
    if missing:
        return Verdict(False, f"production v{current_version} has no {', '.join(missing)} to compare with: refused "
                              f"(fail closed; promote by hand or drop it from deploy.gate.figures)",
                       candidate, current, current_version)
    problems = []
    if "pass_rate" in gated and candidate["pass_rate"] < current["pass_rate"] - max_pass_rate_drop:
        problems.append(f"pass rate {candidate['pass_rate']:.3f} < production's {current['pass_rate']:.3f} "
                        f"- {max_pass_rate_drop}")
    if "perplexity" in gated and candidate["perplexity"] > current["perplexity"] * (1 + max_perplexity_increase):
        problems.append(f"perplexity {candidate['perplexity']:.2f} > production's {current['perplexity']:.2f} "
                        f"x {1 + max_perplexity_increase:.2f}")
    problems += lm_eval_problems(candidate, current, lm_eval)
    if problems:
        return Verdict(False, "; ".join(problems), candidate, current, current_version)
    return Verdict(True, f"within the gates of production v{current_version}", candidate, current, current_version)


def decide(client, name: str, candidate, gate) -> tuple[Verdict, object | None]:
    """The gate, whole: the candidate version's figures against production's, judged with ``gate``
    (``deploy.gate``), and ``production`` moved when it passes. Returns the verdict and the version that
    production pointed to before."""
    current = production_version(client, name)
    verdict = judge(figures(client, candidate), figures(client, current) if current else None,
                    str(current.version) if current else None, gate.max_pass_rate_drop,
                    gate.max_perplexity_increase, tuple(gate.figures), gate.lm_eval)
    if verdict.promote:
        promote(client, name, str(candidate.version), str(current.version) if current else None)
    return verdict, current


def promote(client, name: str, version: str, previous: str | None) -> None:
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, PREVIOUS_TAG, previous)
    client.set_registered_model_alias(name, PRODUCTION, version)


def rollback(client, name: str) -> tuple[str, str]:
    """Move ``production`` back to the version it replaced; (from, to)."""
    current = production_version(client, name)
    if current is None:
        raise StageError(f"rollback: {name} has no '{PRODUCTION}' alias")
    previous = current.tags.get(PREVIOUS_TAG)
    if not previous:
        raise StageError(f"rollback: {name} v{current.version} replaced no earlier production version")
    client.set_registered_model_alias(name, PRODUCTION, previous)
    return str(current.version), previous
