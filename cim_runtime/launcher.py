"""Entry point of the ``cim-run`` command, so that a Ctrl-C while torch still imports ends quietly too."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from cim_runtime.cli import main as run_command
    except KeyboardInterrupt:
        print("cim-run: interrupted", file=sys.stderr)
        return 130
    return run_command()
