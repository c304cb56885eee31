"""The programmed state of a network on arrays: plan, targets, measured conductances and calibration.

``cim-run program`` writes it as two files in its output folder, and ``cim-run infer --programmed``
reads them to run inference without programming again:

* ``programmed.json``: the model (folder and SHA-256 of its weights), backend identity, conductance
  window, weight scale per layer, the tile plan and the session summary.
* ``programmed.npz``: one entry per cell in plan order (array, row, column, layer, original target,
  final target, last verify read, pulses, status) and the per-column readout calibration. It contains
  plain numeric arrays and is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cim_runtime.errors import DataError
from cim_runtime.files import atomic_write, write_json
from cim_runtime.mapping import CellTargets, ConductanceWindow, MappedNetwork, TilePlan, cells_to_pairs

STATE_JSON = "programmed.json"
STATE_ARRAYS = "programmed.npz"
FORMAT = "cim-runtime programmed state"
VERSION = 1
CELL_FIELDS = ("array", "row", "col", "layer", "target_s", "final_target_s", "measured_s", "pulses", "status")


@dataclass
class ProgrammedState:
    """The record of a programming run: its plan, every cell's address, target, last read and status."""

    meta: dict
    plan: TilePlan
    cells: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]

    def mapped(self) -> MappedNetwork:
        """Rebuild the mapping as it was programmed, for decoding weights; its targets are the original ones."""
        low, high = self.meta["conductance_window_s"]
        targets = cells_to_pairs(self.plan, self.cells["target_s"])
        return MappedNetwork(self.plan, ConductanceWindow(low, high), self.meta["scales"], targets)

    def measured_pairs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return cells_to_pairs(self.plan, self.cells["measured_s"])

    def targets(self) -> CellTargets:
        cells = self.cells
        return CellTargets(cells["array"], cells["row"], cells["col"], cells["final_target_s"], cells["layer"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state(folder: Path, meta: dict, plan: TilePlan, cells: dict[str, np.ndarray], calibration: dict[str, np.ndarray]) -> None:
    """Write the arrays first and the JSON last, so a JSON file always has its arrays beside it."""
    missing = [name for name in CELL_FIELDS if name not in cells]
    if missing:
        raise ValueError(f"cell fields missing: {missing}")

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **{f"cell_{name}": cells[name] for name in CELL_FIELDS},
                                **{f"calibration_{name}": value for name, value in calibration.items()})

    atomic_write(folder / STATE_ARRAYS, write)
    write_json(folder / STATE_JSON, {"format": FORMAT, "version": VERSION, **meta, "plan": json.loads(plan.to_json())})


def load_state(folder: Path) -> ProgrammedState:
    """Read a programmed state folder, checking that its parts fit together."""
    folder = Path(folder)
    json_path, arrays_path = folder / STATE_JSON, folder / STATE_ARRAYS
    if not json_path.is_file():
        hint = (f"that run did not finish: finish it with cim-run program --resume --output {folder}" if (folder / "journal.jsonl").is_file()
                else "pass the --output folder of a finished cim-run program run")
        raise DataError(f"{json_path} is missing; {hint}")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        missing = {"conductance_window_s", "scales", "model", "plan", "programming"} - set(meta)
        if missing:
            raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} version {VERSION}")
        plan = TilePlan.from_json(json.dumps(meta.pop("plan")))
        low, high = (float(value) for value in meta["conductance_window_s"])
        meta["conductance_window_s"] = [low, high]
        meta["scales"] = {str(name): float(scale) for name, scale in meta["scales"].items()}
        if set(meta["scales"]) != {spec.name for spec in plan.layers} or not high > low:
            raise ValueError("the scales do not name the plan's layers, or the window is empty")
        if not isinstance(meta["model"], dict) or not isinstance(meta["model"].get("path"), str):
            raise ValueError("the model entry has no path")
        for name in ("tolerance_s", "time_s", "rounds"):
            meta["programming"][name] = float(meta["programming"][name])
        with np.load(arrays_path, allow_pickle=False) as data:
            cells = {name: data[f"cell_{name}"] for name in CELL_FIELDS}
            calibration = {key.removeprefix("calibration_"): data[key] for key in data.files if key.startswith("calibration_")}
    except FileNotFoundError:
        raise DataError(f"{arrays_path} is missing; the programmed state in {folder} is incomplete") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        raise DataError(f"the programmed state in {folder} is corrupt ({exc}); program the network again with cim-run program") from None
    if any(values.shape != (plan.cells_used,) for values in cells.values()):
        raise DataError(f"the programmed state in {folder} has {plan.cells_used} cells in its plan but arrays of other lengths")
    damaged = [name for name, values in cells.items() if values.dtype.kind == "f" and not np.isfinite(values).all()]
    if damaged:
        raise DataError(f"the programmed state in {folder} is corrupt ({', '.join(damaged)} in {STATE_ARRAYS} contains values that are "
                        "not finite numbers); program the network again with cim-run program")
    return ProgrammedState(meta, plan, cells, calibration)
