"""Errors ownlm raises on bad input. Each message names the bad value and the fix.

The type says what went wrong, so callers branch on it, never on a message's text:
the CLI prints any `OwnlmError` as one line, the server picks the HTTP status by type
(`ownlm.serve.errors`).
"""


class OwnlmError(Exception):
    """Base class: a problem the user can fix; the CLI prints it without a traceback."""


class DataError(OwnlmError):
    """A data file is missing, malformed, or lacks a field a task needs."""


class ConfigError(OwnlmError):
    """A config value, command-line option or API argument is invalid."""


class StoreError(OwnlmError):
    """An adapter in the store is corrupt, or was trained for another base model."""


class NotFoundError(StoreError):
    """Nothing is stored under the name asked for (no adapter, no stage result)."""


class RequestError(OwnlmError):
    """A generation request the model cannot run as given (e.g. longer than its context)."""
