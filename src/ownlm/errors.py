"""Errors ownlm raises on bad input. Each message names the bad value and the fix."""


class OwnlmError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""


class DataError(OwnlmError):
    """A data file is missing, malformed, or lacks a field a task needs."""


class ConfigError(OwnlmError):
    """A config value or command-line option is invalid."""


class StoreError(OwnlmError):
    """An adapter in the store is missing, corrupt, or was trained for another base model."""
