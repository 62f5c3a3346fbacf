"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""

from __future__ import annotations


class Co2sError(Exception):
    """Base class: a problem the user can fix (bad config, bad data, bad checkpoint)."""


class ConfigError(Co2sError):
    """A config file or override is invalid; the message names the file and the key path."""


class DataError(Co2sError):
    """A data file or list is missing or invalid; the message names the file (and line)."""


class CheckpointError(Co2sError):
    """A checkpoint is missing, unreadable or does not match the config."""


class TrainingError(Co2sError):
    """Training went wrong in a way the user must look at (e.g. a non-finite loss); the message
    names the step and the files of the batch, and nothing non-finite was written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: the process was asked to stop (a scheduler's pre-emption or time limit, ``kill``,
    ``docker stop``). Stops the work as Ctrl-C does: what is written is kept or removed whole, and
    training first finishes and saves its current step."""


class RunLockedError(Co2sError):
    """Another training run holds the run folder's lock; the message names the folder and the
    holder's pid and host, and nothing in the folder was written."""
