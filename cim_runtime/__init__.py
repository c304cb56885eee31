"""cim-runtime: map neural networks onto memristor crossbar arrays, program them and run inference.

The package never configures logging itself; call :func:`log_to_screen` (or configure the
``cim_runtime`` logger) to see what it does.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def log_to_screen(level: int = logging.INFO) -> None:
    """Send this package's log records to standard error at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(__name__)
    logger.addHandler(handler)
    logger.setLevel(level)
