"""Progress a person can watch: a rich bar on a terminal, periodic log lines elsewhere.

Prefect task logs and CI output are not terminals, so there the same progress is
logged (every 10% or 15 s) instead of drawn.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("lmforge.progress")


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    return f"{value:,.0f} {unit}"


@contextlib.contextmanager
def stage_progress(description: str, total: float, unit: str = "items") -> Iterator[Callable[[float], None]]:
    done = 0.0
    started = last_log = time.time()
    next_fraction = 0.1
    bar = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        task_id = bar.add_task(description, total=total or None)
        bar.start()

    def advance(amount: float) -> None:
        nonlocal done, last_log, next_fraction
        done += amount
        if bar is not None:
            bar.update(task_id, advance=amount)
        now = time.time()
        fraction = done / total if total else 1.0
        if fraction >= next_fraction or now - last_log >= 15:
            log.info("%s: %s / %s (%.0f%%, %.0f s)", description, _fmt(done, unit), _fmt(total, unit),
                     100 * fraction, now - started)
            last_log = now
            while next_fraction <= fraction:
                next_fraction += 0.1

    try:
        yield advance
    finally:
        if bar is not None:
            bar.stop()
