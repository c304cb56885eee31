"""An append-only programming journal: one JSON line per finished step, flushed to disk before going on.

The first line is a header that names the model, backend, plan and settings. Each later line records
one step (one pass over the tiles of one array) after its results are on disk. A crash can leave a
torn last line; :meth:`Journal.open` drops it and cuts it from the file, so the step is done again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cim_runtime.errors import RESTART_HINT, ConfigError, DataError
from cim_runtime.files import atomic_write

FORMAT = "cim-runtime programming journal"
VERSION = 1


class Journal:
    """An open journal file: its header, the steps recorded so far, and :meth:`append`."""

    def __init__(self, path: Path, header: dict, records: list[dict]):
        self.path = path
        self.header = header
        self.records = records

    @classmethod
    def create(cls, path: Path, header: dict) -> "Journal":
        """Start a new journal; refuse to overwrite one."""
        if path.exists():
            raise ConfigError(f"{path} already contains a programming journal; pass --resume to continue that run, "
                              "or choose another --output")
        header = {"format": FORMAT, "version": VERSION, **header}
        # A rename makes the header appear whole or not at all, even if the process dies here.
        atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(header) + "\n", encoding="utf-8"))
        return cls(path, header, [])

    @classmethod
    def open(cls, path: Path) -> "Journal":
        """Read an existing journal, dropping a torn last line."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist, so there is no run to resume; start one without --resume") from None
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        entries, kept_bytes = [], 0
        for number, line in enumerate(complete, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                if number == len(complete) and not tail:
                    break  # A torn last line that happened to end in a newline.
                raise DataError(f"{path} line {number} is not valid JSON; the journal is corrupt, and {RESTART_HINT}") from None
            if not isinstance(entry, dict):
                raise DataError(f"{path} line {number} is not a JSON object; the journal is corrupt, and {RESTART_HINT}")
            entries.append(entry)
            kept_bytes += len(line) + 1
        if not entries or entries[0].get("format") != FORMAT:
            raise DataError(f"{path} is not a cim-runtime programming journal (its header line is missing or foreign); {RESTART_HINT}")
        if entries[0].get("version") != VERSION:
            raise DataError(f"{path} has journal version {entries[0].get('version')!r}; this cim-runtime reads version {VERSION}, "
                            "so resume it with the cim-runtime version that wrote it")
        if kept_bytes != len(raw):
            with open(path, "r+b") as handle:
                handle.truncate(kept_bytes)
        return cls(path, entries[0], entries[1:])

    def append(self, record: dict) -> None:
        """Add one step record and force it to disk."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.append(record)
