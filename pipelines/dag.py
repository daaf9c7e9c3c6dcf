"""Which stages a run covers. Kept free of Prefect so the CLI can check ``--until``
(and do a dry run) before Prefect is imported and configured."""

from __future__ import annotations

from stages.core.errors import ConfigError
from stages.registry import STAGE_ORDER, implemented


# pipeline.alignment chooses the path after sft: reward -> ppo, or dpo alone
SKIPPED_BY_ALIGNMENT = {"ppo": ("dpo",), "dpo": ("reward", "ppo")}


def stages_to_run(until: str | None, alignment: str = "ppo") -> list[str]:
    skipped = SKIPPED_BY_ALIGNMENT[alignment]
    names = [n for n in implemented() if n not in skipped]
    if until is None:
        return names
    if until not in STAGE_ORDER:
        raise ConfigError(f"--until: unknown stage '{until}'; allowed: {', '.join(names)}")
    if until in skipped:
        raise ConfigError(f"--until {until}: pipeline.alignment is '{alignment}', which runs "
                          f"{' -> '.join(n for n in names if n in ('sft', 'reward', 'ppo', 'dpo'))}; "
                          f"set pipeline.alignment={'dpo' if until == 'dpo' else 'ppo'} to run {until}")
    if until not in names:
        raise ConfigError(f"--until: stage '{until}' is not implemented yet; allowed: {', '.join(names)}")
    return names[: names.index(until) + 1]
