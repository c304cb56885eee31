"""cim-runtime: map neural networks onto memristor crossbar arrays, program them and run inference.

The package never configures logging itself; call :func:`log_to_screen` (or configure the
``cim_runtime`` logger) to see what it does.
"""

from __future__ import annotations

import logging
import sys

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


class _StandardErrorHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record arrives."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_screen_handler: logging.Handler | None = None


def log_to_screen(level: int = logging.INFO) -> None:
    """Send this package's log records to standard error at ``level``; calling it again only changes the level."""
    global _screen_handler
    logger = logging.getLogger(__name__)
    if _screen_handler is None:
        # The handler looks up sys.stderr at each record, so a replaced stderr (as in tests) is honoured.
        _screen_handler = _StandardErrorHandler()
        _screen_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(_screen_handler)
    logger.setLevel(level)
