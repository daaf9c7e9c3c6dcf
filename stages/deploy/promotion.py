"""The promotion gate and the ``production`` alias: which registered version a quantize
run produced, the eval figures of any version, the gate's verdict, and rollback."""

from __future__ import annotations

from dataclasses import dataclass

from stages.core.errors import StageError

PRODUCTION = "production"
PREVIOUS_TAG = "lmforge.previous_production"


@dataclass
class Verdict:
    promote: bool
    reason: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    production_version: str | None


def registry_name(pipeline: str) -> str:
    return f"lmforge-{pipeline}-lm"


def version_of_run(client, name: str, run_id: str):
    """The version of ``name`` registered from ``run_id`` (the quantize run's chosen variant)."""
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if not versions:
        raise StageError(f"deploy: run {run_id} registered no version of {name}")
    return max(versions, key=lambda v: int(v.version))


def figures(client, version) -> dict[str, float]:
    """pass_rate and perplexity of a version, from the quantize run that registered it."""
    run = client.get_run(version.run_id)
    variant = run.data.tags.get("lmforge.quantized_variant")
    metrics = run.data.metrics
    if variant is None:  # a policy registered by sft/ppo/dpo: its own held-out pass rate
        key = f"{run.data.tags.get('lmforge.stage', '')}.pass_rate"
        return {"pass_rate": metrics[key]} if key in metrics else {}
    return {k: metrics[f"{variant}.{k}"] for k in ("pass_rate", "perplexity") if f"{variant}.{k}" in metrics}


def production_version(client, name: str):
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except Exception:  # noqa: BLE001 - no alias yet: MLflow raises RestException
        return None


def judge(candidate: dict[str, float], current: dict[str, float] | None, current_version: str | None,
          max_pass_rate_drop: float, max_perplexity_increase: float) -> Verdict:
    if current is None:
        return Verdict(True, "no production model yet", candidate, None, None)
    problems = []
    if "pass_rate" in candidate and "pass_rate" in current and \
            candidate["pass_rate"] < current["pass_rate"] - max_pass_rate_drop:
        problems.append(f"pass rate {candidate['pass_rate']:.3f} < production's {current['pass_rate']:.3f} "
                        f"- {max_pass_rate_drop}")
    if "perplexity" in candidate and "perplexity" in current and \
            candidate["perplexity"] > current["perplexity"] * (1 + max_perplexity_increase):
        problems.append(f"perplexity {candidate['perplexity']:.2f} > production's {current['perplexity']:.2f} "
                        f"x {1 + max_perplexity_increase:.2f}")
    if problems:
        return Verdict(False, "; ".join(problems), candidate, current, current_version)
    return Verdict(True, f"within the gates of production v{current_version}", candidate, current, current_version)


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
