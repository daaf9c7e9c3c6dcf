"""Errors a user can act on: they are printed as one line, never as a traceback."""

import threading


class LmforgeError(Exception):
    """Base for errors whose message is meant for the user as-is."""

    exit_code = 1


class ConfigError(LmforgeError):
    """A config file or ``--set`` override is wrong; the message names the field."""

    exit_code = 2


class StageError(LmforgeError):
    """A stage could not do its job; the message says which stage and why."""


class Cancelled(LmforgeError):
    """The run was cancelled (``lmforge cancel``, SIGTERM, Ctrl-C): runs end as KILLED, not FAILED."""

    exit_code = 130


# Set by a cancel request (``lmforge cancel``'s signal). The signal raises ``Cancelled`` where the main thread
# happens to be, and that can be inside a framework (Prefect's engine, Ray's client) that wraps or swallows
# it; the request itself is what decides that a run was cancelled, so it is kept here and checked again.
CANCEL_REQUESTED = threading.Event()


def cancel_requested(exc: BaseException | None = None) -> bool:
    """Whether the run was cancelled: a cancel was requested, or ``exc`` is one."""
    return CANCEL_REQUESTED.is_set() or isinstance(exc, (Cancelled, KeyboardInterrupt)) \
        or type(exc).__name__ == "TerminationSignal"


def raise_if_cancel_requested() -> None:
    """Raise ``Cancelled`` if a cancel was requested but its exception did not get through."""
    if CANCEL_REQUESTED.is_set():
        raise Cancelled("cancelled (lmforge cancel)")
