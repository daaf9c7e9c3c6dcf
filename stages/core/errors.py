"""Errors a user can act on: they are printed as one line, never as a traceback."""


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
