"""Status messages: every part of lodit reports what it is doing through :mod:`logging`.

Modules log to ``logging.getLogger(__name__)`` (loggers under ``"lodit"``): ``info`` for what a
user running a command wants to see (stages starting, a resume, a skipped checkpoint),
``warning`` for something that went wrong but was handled, ``debug`` for detail. Nothing in the
library prints or configures output; the ``lodit`` command calls :func:`show_status` to put the
messages on stderr, one plain line each. Library users see them the usual way, e.g.
``logging.basicConfig(level=logging.INFO)``. Results a command prints (its summary on stdout)
and progress bars are not status messages.
"""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (not the one at set-up)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_status(level: int = logging.INFO) -> None:
    """Print lodit's status messages of ``level`` and above to stderr, once per process."""
    logger = logging.getLogger("lodit")
    logger.setLevel(level)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
