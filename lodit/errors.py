"""User-facing errors.

A :class:`LoditError` is a mistake the user can fix (missing file, bad config, unreadable audio,
incompatible checkpoint). The CLI prints its message on one line and exits non-zero instead of
showing a traceback. Messages name the thing that is wrong and the fix.
"""


class LoditError(Exception):
    """A user mistake, reported as one line by the CLI."""


class ConfigError(LoditError):
    """A config file or override names an unknown key or holds a value of the wrong type."""
