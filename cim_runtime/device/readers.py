"""Read pulse-train measurements from the file layouts labs publish, defensively.

Recognized layouts (``read_measurements`` picks by content):

* ``cim-run characterize`` output: CSV with header ``cycle,direction,pulse,cell,conductance_s``.
  Each train starts with a read of the state the train before it left, so the file also yields
  repeated reads (for read noise).
* ``cim-run characterize`` read-noise output: CSV with header ``level,read,cell,conductance_s``;
  it adds repeated reads (for read noise) and no ramps.
* One value per line (``.txt``): one ramp; the direction comes from the file name
  (``potentiation``/``set``/``up`` or ``depression``/``reset``/``down``).
* CSV with a header of ramp names (``rmp1,rmp2,...``): one ramp per column, ragged columns allowed;
  the direction comes from the file name.
* CSV of two columns without a header: column 1 is an up ramp, column 2 a down ramp.

Values are conductances, unless ``current_read_voltage_v`` marks them as read currents at that voltage.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cim_runtime.device.presets import parse_finite_number, read_conductance_column
from cim_runtime.errors import DataError

UP_WORDS = ("potentiation", "set", "up", "ltp")
DOWN_WORDS = ("depression", "reset", "down", "ltd")
#: Largest file the readers accept, in bytes; pulse tables are far smaller.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Header of the read-noise CSV that ``cim-run characterize`` writes.
READ_NOISE_HEADER = ("level", "read", "cell", "conductance_s")


@dataclass
class PulseTrainData:
    """Measured ramps: conductance before and after each pulse, one array per ramp."""

    name: str
    up: list[np.ndarray] = field(default_factory=list)
    down: list[np.ndarray] = field(default_factory=list)
    #: Cell identity of each up and down ramp, where the file names cells (for device-to-device spread).
    up_cells: list[int] = field(default_factory=list)
    down_cells: list[int] = field(default_factory=list)
    #: Repeated reads of unchanged cells, one array per cell and level, in the same unit as the ramps.
    repeated_reads_s: list[np.ndarray] = field(default_factory=list)

    def mapped_onto(self, low_s: float, high_s: float) -> "PulseTrainData":
        """Return a copy whose values are mapped linearly from their measured range onto [low_s, high_s]."""
        if not 0 <= low_s < high_s:
            raise DataError(f"target window [{low_s:g}, {high_s:g}] S is invalid: need 0 <= MIN < MAX")
        values = np.concatenate(self.up + self.down)
        low, high = float(values.min()), float(values.max())
        if not high > low:
            raise DataError(f"{self.name}: every value is {low:g}, so there is no range to map")

        def scale(ramp: np.ndarray) -> np.ndarray:
            return low_s + (ramp - low) * (high_s - low_s) / (high - low)

        return PulseTrainData(self.name, [scale(r) for r in self.up], [scale(r) for r in self.down],
                              list(self.up_cells), list(self.down_cells), [scale(r) for r in self.repeated_reads_s])

    def extend(self, other: "PulseTrainData") -> None:
        self.up += other.up
        self.down += other.down
        self.up_cells += other.up_cells
        self.down_cells += other.down_cells
        self.repeated_reads_s += other.repeated_reads_s


def direction_from_name(path: Path) -> str:
    """Return ``up`` or ``down`` from words in a file name."""
    words = path.stem.lower().replace("-", "_").split("_")
    if any(word in UP_WORDS for word in words):
        return "up"
    if any(word in DOWN_WORDS for word in words):
        return "down"
    raise DataError(f"cannot tell the pulse direction of {path.name}: put potentiation/set or depression/reset in its name")


def _rows(path: Path) -> list[list[str]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB; split it or pass fewer ramps")
        with open(path, newline="", encoding="utf-8") as handle:
            return [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _characterize_csv(path: Path, rows: list[list[str]]) -> PulseTrainData:
    data = PulseTrainData(path.stem)
    ramps: dict[tuple[int, str, int], list[tuple[int, float]]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 5:
            raise DataError(f"{path}, line {number}: expected 5 fields, got {len(row)}")
        cycle, direction, pulse, cell = int(parse_finite_number(row[0], path, number)), row[1], int(parse_finite_number(row[2], path, number)), int(parse_finite_number(row[3], path, number))
        if direction not in ("potentiation", "depression"):
            raise DataError(f"{path}, line {number}: direction {direction!r} is not potentiation or depression")
        ramps.setdefault((cycle, direction, cell), []).append((pulse, parse_finite_number(row[4], path, number)))
    sequences: dict[int, list[np.ndarray]] = {}
    for (cycle, direction, cell), points in sorted(ramps.items(), key=lambda item: (item[0][0], item[0][1] != "potentiation", item[0][2])):
        values = np.array([value for _, value in sorted(points)])
        (data.up if direction == "potentiation" else data.down).append(values)
        (data.up_cells if direction == "potentiation" else data.down_cells).append(cell)
        sequences.setdefault(cell, []).append(values)
    # A train starts with a read of the state the previous train left, with no pulse between the two
    # reads, so the last read of each ramp and the first of the next are repeated reads of one state.
    for trains in sequences.values():
        data.repeated_reads_s += [np.array([before[-1], after[0]]) for before, after in zip(trains, trains[1:])]
    return data


def _read_noise_csv(path: Path, rows: list[list[str]]) -> PulseTrainData:
    series: dict[tuple[int, int], list[float]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 4:
            raise DataError(f"{path}, line {number}: expected 4 fields, got {len(row)}")
        level, cell = int(parse_finite_number(row[0], path, number)), int(parse_finite_number(row[2], path, number))
        series.setdefault((level, cell), []).append(parse_finite_number(row[3], path, number))
    if not series:
        raise DataError(f"{path} contains no reads")
    return PulseTrainData(path.stem, repeated_reads_s=[np.asarray(series[key]) for key in sorted(series)])


def _column_csv(path: Path, rows: list[list[str]], header: bool) -> list[np.ndarray]:
    body = rows[1:] if header else rows
    width = max(len(row) for row in body) if body else 0
    columns: list[list[float]] = [[] for _ in range(width)]
    for number, row in enumerate(body, start=2 if header else 1):
        for column, text in enumerate(row):
            if text.strip():
                columns[column].append(parse_finite_number(text, path, number))
    ramps = [np.asarray(column) for column in columns if len(column) >= 2]
    if not ramps:
        raise DataError(f"{path} contains no ramp of at least 2 values")
    return ramps


def read_measurement(path: Path, current_read_voltage_v: float | None = None) -> PulseTrainData:
    """Read one measurement file in any recognized layout."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"measurement file not found: {path}")
    if path.suffix.lower() == ".txt":
        values = read_conductance_column(path)
        if values.size < 2:
            raise DataError(f"{path} contains {values.size} value; a ramp needs at least 2")
        data = PulseTrainData(path.stem)
        (data.up if direction_from_name(path) == "up" else data.down).append(values)
    else:
        rows = _rows(path)
        if not rows:
            raise DataError(f"{path} is empty")
        first = [cell.strip() for cell in rows[0]]
        if tuple(first) == ("cycle", "direction", "pulse", "cell", "conductance_s"):
            data = _characterize_csv(path, rows)
        elif tuple(first) == READ_NOISE_HEADER:
            data = _read_noise_csv(path, rows)
        else:
            header = any(_is_text(cell) for cell in first)
            ramps = _column_csv(path, rows, header)
            data = PulseTrainData(path.stem)
            if header:
                (data.up if direction_from_name(path) == "up" else data.down).extend(ramps)
            elif len(ramps) == 2:
                data.up.append(ramps[0])
                data.down.append(ramps[1])
            else:
                raise DataError(f"{path} has {len(ramps)} unnamed columns; expected 2 (up, down) or a header of ramp names")
    if current_read_voltage_v is not None:
        if not current_read_voltage_v > 0:
            raise DataError(f"read voltage {current_read_voltage_v} V is invalid: must be above 0")
        data.up = [ramp / current_read_voltage_v for ramp in data.up]
        data.down = [ramp / current_read_voltage_v for ramp in data.down]
        data.repeated_reads_s = [reads / current_read_voltage_v for reads in data.repeated_reads_s]
    return data


def _is_text(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return bool(cell)
    return False


def read_measurements(paths, current_read_voltage_v: float | None = None) -> PulseTrainData:
    """Read several files into one data set; at least one up and one down ramp are required."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no measurement file given")
    data = PulseTrainData(paths[0].stem if len(paths) == 1 else "+".join(p.stem for p in paths))
    for path in paths:
        data.extend(read_measurement(path, current_read_voltage_v))
    if not data.up or not data.down:
        raise DataError(f"{', '.join(map(str, paths))}: need both potentiation and depression ramps, "
                        f"found {len(data.up)} up and {len(data.down)} down")
    return data
