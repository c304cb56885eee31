"""Per-column calibration of the analog readout after programming.

For each tile, random read-voltage vectors drive the tile's rows and the driver measures the tile's
column currents. Each physical column gets a straight line, measured = gain * expected + offset,
fitted by least squares against the currents the programmed targets predict. The programmed state
keeps the gains and offsets. Their spread shows how well programming and readout agree column by
column.
"""

from __future__ import annotations

import numpy as np

from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import CellTargets, TilePlan


def fit_lines(expected: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares gain and offset of each column of ``measured`` (vectors, columns) against ``expected``."""
    centred = expected - expected.mean(axis=0)
    spread = (centred**2).sum(axis=0)
    gain = np.divide((centred * (measured - measured.mean(axis=0))).sum(axis=0), spread, out=np.ones(spread.shape), where=spread > 0)
    offset = measured.mean(axis=0) - gain * expected.mean(axis=0)
    return gain, offset


def calibrate_columns(
    driver: ArrayDriver, plan: TilePlan, targets: CellTargets, *, vectors: int = 16, seed: int = 0, read_voltage_v: float | None = None,
) -> dict[str, np.ndarray]:
    """Fit gain and offset of every physical column the plan's tiles use, tile by tile.

    Args:
        targets: every cell's address and programmed target, in plan order; addresses may differ
            from the plan's where columns were moved to spares.
        vectors: test vectors per tile; at least 2.

    Returns:
        Per calibrated column: ``tile`` (index into the plan), ``array``, ``col`` (physical column),
        ``gain`` (dimensionless) and ``offset_a`` (amperes).
    """
    if vectors < 2:
        raise ConfigError(f"vectors={vectors} is invalid: a line fit needs at least 2 test vectors")
    info = driver.info()
    voltage_v = info.default_read_voltage_v if read_voltage_v is None else read_voltage_v
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("tile", "array", "col", "gain", "offset_a")}
    start = 0
    for index, tile in enumerate(plan.tiles):
        stop = start + 2 * tile.rows * tile.cols
        cols, column_of_cell = np.unique(targets.col[start:stop], return_inverse=True)
        conductance_s = np.zeros((info.rows, cols.size))
        conductance_s[targets.row[start:stop], column_of_cell] = targets.target_s[start:stop]
        voltages_v = np.zeros((vectors, info.rows))
        voltages_v[:, tile.array_row : tile.array_row + tile.rows] = rng.uniform(0.0, voltage_v, (vectors, tile.rows))
        measured_a = driver.mvm(voltages_v, array=tile.array)[:, cols]
        gain, offset = fit_lines(voltages_v @ conductance_s, measured_a)
        for name, values in (("tile", np.full(cols.size, index)), ("array", np.full(cols.size, tile.array)), ("col", cols),
                             ("gain", gain), ("offset_a", offset)):
            parts[name].append(values)
        start = stop
    return {name: np.concatenate(values) for name, values in parts.items()}


def calibration_summary(calibration: dict[str, np.ndarray]) -> dict:
    """Spread of the fitted gains and the largest offset, for reports."""
    gain, offset = calibration["gain"], calibration["offset_a"]
    return {"columns": int(gain.size), "gain_mean": float(gain.mean()), "gain_std": float(gain.std()),
            "gain_min": float(gain.min()), "gain_max": float(gain.max()), "offset_abs_max_a": float(np.abs(offset).max())}
