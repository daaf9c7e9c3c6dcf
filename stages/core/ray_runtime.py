"""Ray, sized to the machine: local ``ray.init()`` by default, or an existing cluster.

On 2 cores every task states its ``num_cpus`` and sets torch threads to match
(docs/architecture.md: a task that takes a whole CPU can starve the rest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

log = logging.getLogger("lmforge.ray")


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    with _keeping_sigterm_handler():
        _init(ray, address, num_cpus)


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """``ray.init`` replaces the driver's SIGTERM handler with a ``sys.exit``; the one installed before (Prefect's,
    which turns a worker's SIGTERM into a cancelled flow run) must stay in charge."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, before)


def _init(ray, address: str | None, num_cpus: float | None) -> None:
    from stages.core.quiet import ray_runtime_env

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # inside a Ray job, the submission carries it
        common["runtime_env"] = ray_runtime_env()  # workers silence the noise the driver does
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, **common)
        return
    cpus = int(num_cpus or os.cpu_count() or 1)
    log.info("starting local Ray with %d CPUs", cpus)
    ray.init(
        num_cpus=cpus,
        # the dashboard serves Ray's state API, which Ray Train's placement-group cleaner
        # polls (and which shows a person the tasks and actors); loopback only
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        # keep the object store modest: the machine is shared with training later
        object_store_memory=min(2 * 2**30, int(_memory_bytes() * 0.1)),
        **common,
    )


def _memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().total


def run_tasks(label: str, fn, args_list: list[tuple], options: dict) -> list:
    """Run ``fn`` as one Ray task per argument tuple, with progress; results in input order."""
    import ray

    from stages.core.progress import stage_progress

    from stages.core.errors import LmforgeError

    remote = ray.remote(fn).options(**options)
    refs = [remote.remote(*args) for args in args_list]
    results: dict = {}
    with stage_progress(label, total=len(refs), unit="shards") as advance:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[ref] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    # an error meant for the user (object storage down, ...) stays one line, not a task traceback
                    if isinstance(exc.cause, LmforgeError):
                        for other in pending:
                            ray.cancel(other)
                        raise exc.cause from None
                    raise
                advance(1)
    return [results[ref] for ref in refs]


def worker_stdout_to_stderr() -> None:
    """In a Ray worker: send its stdout (Python and C level) where its stderr goes.

    Ray forwards a worker's stdout to the driver's stdout, late and unordered; the CLI
    promises that its stdout ends with one JSON summary line, so worker chatter (our
    progress, DeepSpeed's op-build notes) belongs on stderr.
    """
    import sys

    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def stop_ray() -> None:
    """Shut down this process's Ray (if any) so no late worker log line follows the summary."""
    import sys

    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
