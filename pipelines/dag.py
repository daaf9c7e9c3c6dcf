"""Which stages a run covers. Kept free of Prefect so the CLI can check ``--until``
(and do a dry run) before Prefect is imported and configured."""

from __future__ import annotations

from stages.core.errors import ConfigError
from stages.registry import STAGE_ORDER, implemented


def stages_to_run(until: str | None) -> list[str]:
    names = implemented()
    if until is None:
        return names
    if until not in STAGE_ORDER:
        raise ConfigError(f"--until: unknown stage '{until}'; allowed: {', '.join(names)}")
    if until not in names:
        raise ConfigError(f"--until: stage '{until}' is not implemented yet; allowed: {', '.join(names)}")
    return names[: names.index(until) + 1]
