"""Read TOML files with clear errors, and write files so that a reader never sees half of one (through a temporary file, then a rename)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import tomllib
from pathlib import Path

from cim_runtime.errors import DataError


def read_toml(path: Path, kind: str) -> dict:
    """Parse the TOML file at ``path``. ``kind`` names the file in error messages, such as "device file".

    Raises:
        DataError: the file is missing, unreadable or not valid TOML.
    """
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {kind} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{kind} {path} is not valid TOML: {exc}") from exc


def _default_file_mode() -> int:
    """Return the mode a newly created file gets under the process umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, force it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, _default_file_mode())
        _sync(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename itself lives in the folder, which must reach the disk too to survive a power loss.
    _sync(path.parent)


def _sync(path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json(path: Path, data: dict) -> None:
    def write(temporary: str) -> None:
        Path(temporary).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    atomic_write(path, write)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write dictionaries with the same keys as CSV rows under a header; list values become space-separated."""
    def write(temporary: str) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            for row in rows:
                writer.writerow({key: " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value for key, value in row.items()})

    atomic_write(path, write)
