"""A resumable programming session over a whole tile plan.

The session works in steps. A step is one pass over the tiles of one array, and passes run in order:

1. ``program``: write-verify every cell of the array.
2. ``retry`` (``retry_passes`` times): read every cell again, which catches cells that relaxed after
   they were accepted, and write-verify the ones outside their band with a fresh budget. A cell still
   outside its band after the last retry is marked stuck.
3. ``compensate`` (if enabled): for each stuck cell whose partner in the differential pair is fine,
   move the partner's target by the stuck cell's error, so that G+ - G- still encodes the weight, and
   program the partner there. A target that would leave the conductance window is clipped and the
   stuck cell stays marked as not compensated.
4. ``remap`` (if the plan keeps spare column pairs): move each tile column pair that still contains a
   stuck cell to a free spare pair on the same rows of the same array, and program it there with
   the original targets. The cells' addresses change; the programmed state records the new ones.

After each step the session writes the step's per-cell results to ``steps/``, asks the driver for a
checkpoint, and appends one line to ``journal.jsonl``. A resumed session reads the journal, reloads
the finished steps' results, restores the driver's checkpoint and goes on with the next step, so no
finished cell is programmed again.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import RESTART_HINT, ConfigError, DataError
from cim_runtime.files import atomic_write
from cim_runtime.mapping import CellTargets, Chunk, TilePlan
from cim_runtime.programming.journal import Journal
from cim_runtime.programming.write_verify import WriteVerifyConfig, WriteVerifyResult, tolerance_for, verify_read, write_verify

logger = logging.getLogger(__name__)

#: Per-cell outcome codes, indexes into :data:`STATUS_NAMES`.
OK, RETRIED, STUCK_COMPENSATED, STUCK, COMPENSATING, REMAPPED = range(6)
STATUS_NAMES = ("ok", "retried", "stuck-compensated", "stuck", "compensating", "remapped")
JOURNAL_FILE = "journal.jsonl"
STEP_FIELDS = ("row", "col", "target_s", "measured_s", "pulses", "status")


@dataclass(frozen=True)
class SessionSettings:
    """Settings of a programming session."""

    write_verify: WriteVerifyConfig = field(default_factory=WriteVerifyConfig)
    #: Passes after the first that re-read every cell and reprogram the ones outside their band.
    retry_passes: int = 1
    #: Re-target the other device of a pair whose cell is stuck.
    compensate_pairs: bool = True
    #: Move column pairs that keep a stuck cell to the plan's spare pairs, where it has any.
    remap_to_spares: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.retry_passes <= 10:
            raise ConfigError(f"retry_passes={self.retry_passes} is invalid: must be from 0 to 10")

    def passes(self, spare_pairs: int = 0) -> list[str]:
        """Name the passes in order; the remap pass only where the plan keeps spare pairs."""
        return (["program"] + ["retry"] * self.retry_passes + (["compensate"] if self.compensate_pairs else [])
                + (["remap"] if self.remap_to_spares and spare_pairs else []))

    def to_dict(self) -> dict:
        return {"write_verify": asdict(self.write_verify), "retry_passes": self.retry_passes, "compensate_pairs": self.compensate_pairs,
                "remap_to_spares": self.remap_to_spares}


@dataclass
class SessionResult:
    """Per-cell outcome of a session, in :func:`~cim_runtime.mapping.cell_targets` order."""

    targets: CellTargets
    #: Target each cell was finally programmed to; differs from ``targets.target_s`` for compensating cells.
    target_s: np.ndarray
    measured_s: np.ndarray
    pulses: np.ndarray
    status: np.ndarray
    tolerance_s: float
    elapsed_s: float
    steps: int

    @property
    def in_tolerance(self) -> np.ndarray:
        return np.abs(self.measured_s - self.target_s) <= self.tolerance_s

    def as_write_verify_result(self) -> WriteVerifyResult:
        targets = CellTargets(self.targets.array, self.targets.row, self.targets.col, self.target_s, self.targets.layer)
        return WriteVerifyResult(targets, self.measured_s, self.pulses, self.in_tolerance, self.tolerance_s, self.elapsed_s, self.steps)

    def summary(self) -> dict:
        counts = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return {**self.as_write_verify_result().summary(), "steps": self.steps,
                "cells_by_status": {name: int(count) for name, count in zip(STATUS_NAMES, counts)}}


#: The command-line option behind each setting, for messages about a resume with other options.
OPTION_NAMES = {"scheme": "--scheme", "tolerance_rel": "--tolerance", "reads_per_verify": "--verify-reads", "discard_reads": "--verify-reads",
                "confirm_reads": "--confirm-reads", "retry_passes": "--retry-passes", "compensate_pairs": "--no-compensation (compensate_pairs)"}
#: The options behind each header entry, for the same messages.
HEADER_NAMES = {"model_sha256": "the model weights (--model)", "plan_sha256": "the tile plan (--tile, --spare-pairs or the array size)",
                "backend": "the backend (--backend, --device-profile or --seed)", "device_model_sha256": "the device model (--device-profile)",
                "targets_sha256": "the target conductances (--model or the backend's window)", "steps": "the number of steps"}


def _changed_leaves(before: dict, after: dict):
    """Yield (name, old value, new value) for every entry that differs between two nested dictionaries."""
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _changed_leaves(old, new)
        elif old != new:
            yield name, old, new


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 of the bytes of some arrays, to check that a resumed run has the same targets."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class _Cells:
    """The session's per-cell arrays."""

    def __init__(self, targets: CellTargets):
        count = len(targets)
        self.row = targets.row.astype(np.int32, copy=True)
        self.col = targets.col.astype(np.int32, copy=True)
        self.target_s = targets.target_s.astype(np.float64, copy=True)
        self.measured_s = np.full(count, np.nan)
        self.pulses = np.zeros(count, dtype=np.int32)
        self.status = np.zeros(count, dtype=np.int8)

    def save(self, path: Path, chunk: Chunk) -> None:
        part = np.s_[chunk.cell_start : chunk.cell_stop]

        def write(temporary: str) -> None:
            with open(temporary, "wb") as handle:
                np.savez(handle, cell_start=chunk.cell_start, **{name: getattr(self, name)[part] for name in STEP_FIELDS})

        atomic_write(path, write)

    def load(self, path: Path, chunk: Chunk) -> None:
        part = np.s_[chunk.cell_start : chunk.cell_stop]
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["cell_start"]) != chunk.cell_start:
                    raise ValueError("it belongs to another array")
                for name in STEP_FIELDS:
                    getattr(self, name)[part] = data[name]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"step file {path} cannot be used ({exc}); {RESTART_HINT}") from None


class ProgrammingSession:
    """Program ``targets`` chunk by chunk through ``driver``, journaling each step in ``folder``.

    Args:
        plan: the tile plan the targets come from; needed only to remap stuck columns to its spares.
    """

    def __init__(self, driver: ArrayDriver, targets: CellTargets, chunks: list[Chunk], folder: Path, settings: SessionSettings,
                 plan: TilePlan | None = None):
        self.driver = driver
        self.targets = targets
        self.chunks = chunks
        self.plan = plan
        self.folder = Path(folder)
        self.settings = settings
        info = driver.info()
        self.tolerance_s = tolerance_for(settings.write_verify, info.window_s)
        self.window_s = (info.conductance_min_s, info.conductance_max_s)
        self.cells = _Cells(targets)
        self.steps = [(kind, chunk) for kind in settings.passes(plan.spare_pairs if plan else 0) for chunk in chunks]
        #: First cell of every tile of the plan, and one past the last cell, for the remap pass.
        sizes = [2 * tile.rows * tile.cols for tile in plan.tiles] if plan else []
        self.tile_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def header(self, extra: dict) -> dict:
        device = self.driver.device_model()
        return {**extra, "backend": self.driver.info().identity, "settings": self.settings.to_dict(), "steps": len(self.steps),
                "device_model_sha256": hashlib.sha256(device.to_toml().encode()).hexdigest() if device is not None else None,
                "targets_sha256": fingerprint(self.targets.array, self.targets.row, self.targets.col, self.targets.target_s)}

    def run(self, extra_header: dict, *, resume: bool, progress: bool = True) -> SessionResult:
        """Run every step not yet journaled and return the outcome of all of them."""
        started = time.monotonic()
        path = self.folder / JOURNAL_FILE
        header = self.header(extra_header)
        if resume:
            journal = Journal.open(path)
            self._check_same_run(journal.header, header)
            self._reload(journal)
            self.driver.restore_checkpoint(len(journal.records))
        else:
            journal = Journal.create(path, header)
        done = len(journal.records)
        with tqdm(total=len(self.steps), initial=done, desc="program", unit="step", disable=not progress) as bar:
            for index in range(done, len(self.steps)):
                kind, chunk = self.steps[index]
                step_started = time.monotonic()
                pulses_before = int(self.cells.pulses[chunk.cell_start : chunk.cell_stop].sum())
                getattr(self, f"_{kind}")(chunk)
                step_file = f"steps/step-{index:05d}.npz"
                self.cells.save(self.folder / step_file, chunk)
                self.driver.save_checkpoint(index + 1)
                journal.append({**self._record(index, kind, chunk, step_file, pulses_before), "time_s": time.monotonic() - step_started})
                bar.update(1)
        placed = CellTargets(self.targets.array, self.cells.row, self.cells.col, self.targets.target_s, self.targets.layer)
        # The time of every step, over however many runs it took: a resumed run counts its earlier parts too.
        elapsed_s = sum(float(record.get("time_s", 0.0)) for record in journal.records) if journal.records else time.monotonic() - started
        return SessionResult(placed, self.cells.target_s, self.cells.measured_s, self.cells.pulses, self.cells.status,
                             self.tolerance_s, elapsed_s, len(self.steps))

    # Resume.

    def _check_same_run(self, stored: dict, now: dict) -> None:
        for key, value in now.items():
            if stored.get(key) == value:
                continue
            if key == "settings" and isinstance(stored.get(key), dict):
                changes = [f"{OPTION_NAMES.get(name, name)} was {before!r} and is {after!r} now"
                           for name, before, after in _changed_leaves(stored[key], value)]
            else:
                changes = [f"{HEADER_NAMES.get(key, key)} differs"]
            raise ConfigError(f"--resume: {'; '.join(changes)}, against the interrupted run in {self.folder}; resume with the options it was started "
                              "with, or program again into another --output folder")

    def _reload(self, journal: Journal) -> None:
        if len(journal.records) > len(self.steps):
            raise DataError(f"{journal.path} records {len(journal.records)} steps but this run has {len(self.steps)}; {RESTART_HINT}")
        for index, record in enumerate(journal.records):
            kind, chunk = self.steps[index]
            if record.get("step") != index or record.get("kind") != kind:
                raise DataError(f"{journal.path} line {index + 2} records step {record.get('step')!r} ({record.get('kind')!r}) where "
                                f"step {index} ({kind!r}) belongs; the journal is corrupt, and {RESTART_HINT}")
            self.cells.load(self.folder / f"steps/step-{index:05d}.npz", chunk)
        logger.info("resuming after %d of %d steps", len(journal.records), len(self.steps))

    def _record(self, index: int, kind: str, chunk: Chunk, step_file: str, pulses_before: int) -> dict:
        part = np.s_[chunk.cell_start : chunk.cell_stop]
        in_band = np.abs(self.cells.measured_s[part] - self.cells.target_s[part]) <= self.tolerance_s
        return {"step": index, "kind": kind, "array": chunk.array, "tiles": list(chunk.tiles), "cells": chunk.cell_stop - chunk.cell_start,
                "pulses": int(self.cells.pulses[part].sum()) - pulses_before, "in_tolerance": int(in_band.sum()), "file": step_file}

    # Steps.

    def _subset(self, cells: np.ndarray) -> CellTargets:
        return CellTargets(self.targets.array[cells], self.cells.row[cells], self.cells.col[cells], self.cells.target_s[cells])

    def _write_verify(self, cells: np.ndarray) -> np.ndarray:
        """Write-verify ``cells`` to their present targets; return which ended inside their band."""
        result = write_verify(self.driver, self._subset(cells), self.settings.write_verify, progress=False)
        self.cells.measured_s[cells] = result.measured_s
        self.cells.pulses[cells] += result.pulses
        return result.in_tolerance

    def _program(self, chunk: Chunk) -> None:
        cells = np.arange(chunk.cell_start, chunk.cell_stop)
        self.cells.status[cells] = np.where(self._write_verify(cells), OK, STUCK)

    def _retry(self, chunk: Chunk) -> None:
        cells = np.arange(chunk.cell_start, chunk.cell_stop)
        self.cells.measured_s[cells] = verify_read(self.driver, self._subset(cells), np.arange(cells.size), self.settings.write_verify)
        outside = cells[np.abs(self.cells.measured_s[cells] - self.cells.target_s[cells]) > self.tolerance_s]
        if outside.size:
            self.cells.status[outside] = np.where(self._write_verify(outside), RETRIED, STUCK)

    def _compensate(self, chunk: Chunk) -> None:
        self._compensate_cells(np.arange(chunk.cell_start, chunk.cell_stop), chunk.array)

    def _compensate_cells(self, cells: np.ndarray, array: int) -> None:
        stuck = cells[self.cells.status[cells] == STUCK]
        partner = stuck ^ 1  # G+ and G- of a pair are neighbours in cell order.
        usable = ~np.isin(self.cells.status[partner], (STUCK, STUCK_COMPENSATED, COMPENSATING))
        stuck, partner = stuck[usable], partner[usable]
        if not stuck.size:
            return
        # G+ - G- keeps its target if the partner moves by the stuck cell's error, in the same direction.
        shifted_s = self.cells.target_s[partner] + (self.cells.measured_s[stuck] - self.cells.target_s[stuck])
        self.cells.target_s[partner] = np.clip(shifted_s, *self.window_s)
        reachable = self.cells.target_s[partner] == shifted_s
        in_band = self._write_verify(partner)
        self.cells.status[partner] = np.where(in_band, COMPENSATING, STUCK)
        self.cells.status[stuck] = np.where(in_band & reachable, STUCK_COMPENSATED, STUCK)
        logger.info("array %d: %d stuck cells, %d compensated by their pair", array, stuck.size, int((in_band & reachable).sum()))

    def _pair_error_s(self, members: np.ndarray) -> float:
        """Summed error of the weights (G+ - G-) that ``members``, whole pairs, encode."""
        positive, negative = members[members % 2 == 0], members[members % 2 == 0] + 1
        measured = self.cells.measured_s[positive] - self.cells.measured_s[negative]
        expected = self.targets.target_s[positive] - self.targets.target_s[negative]
        return float(np.abs(measured - expected).sum())

    def _remap(self, chunk: Chunk) -> None:
        cells = np.arange(chunk.cell_start, chunk.cell_stop)
        stuck = cells[self.cells.status[cells] == STUCK]
        if not stuck.size:
            return
        # A column pair is named by its tile and its original physical pair index on the array.
        tile_of = np.searchsorted(self.tile_starts, stuck, side="right") - 1
        moved = failed = 0
        for tile, pair in sorted(set(zip(tile_of.tolist(), (self.targets.col[stuck] // 2).tolist()))):
            start, stop = self.tile_starts[tile], self.tile_starts[tile + 1]
            members = start + np.flatnonzero(self.targets.col[start:stop] // 2 == pair)
            spare = self._free_spare_pair(cells, self.cells.row[members])
            if spare is None:
                failed += 1
                continue
            moved += self._move_to_spare(members, spare, chunk.array)
        logger.info("array %d: moved %d column pairs with stuck cells to spares; %d stayed", chunk.array, moved, failed)

    def _move_to_spare(self, members: np.ndarray, spare: int, array: int) -> bool:
        """Program a column pair into spare pair ``spare``; keep the move only if its weights come out closer."""
        before = {name: getattr(self.cells, name)[members].copy() for name in ("col", "target_s", "measured_s", "status")}
        error_before_s = self._pair_error_s(members)
        self.cells.col[members] = self.plan.spare_col_start + 2 * spare + self.targets.col[members] % 2
        self.cells.target_s[members] = self.targets.target_s[members]
        self.cells.status[members] = np.where(self._write_verify(members), REMAPPED, STUCK)
        # The spare pair may hold stuck cells of its own; its pairs can compensate them as well.
        self._compensate_cells(members, array)
        if self._pair_error_s(members) < error_before_s:
            return True
        for name, values in before.items():
            getattr(self.cells, name)[members] = values
        return False

    def _free_spare_pair(self, cells: np.ndarray, rows: np.ndarray) -> int | None:
        """Return the first spare pair of the array with every one of ``rows`` free, or None."""
        in_spares = cells[self.cells.col[cells] >= self.plan.spare_col_start]
        occupied = set(zip(self.cells.row[in_spares].tolist(), ((self.cells.col[in_spares] - self.plan.spare_col_start) // 2).tolist()))
        needed_rows = np.unique(rows).tolist()
        for spare in range(self.plan.spare_pairs):
            if not any((row, spare) in occupied for row in needed_rows):
                return spare
        return None
