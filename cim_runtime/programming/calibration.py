"""Per-column calibration of the analog readout after programming.

For each tile, random read-voltage vectors drive the tile's rows and the driver measures the tile's
column currents. Each physical column gets a straight line, measured = gain * expected + offset,
fitted by least squares against the currents the programmed targets predict. Analog inference
divides the offset out and the gain back; the spread of the gains also shows how well programming
and readout agree column by column.
"""

from __future__ import annotations

import numpy as np

from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import TilePlan


def fit_lines(expected: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares gain and offset of each column of ``measured`` (vectors, columns) against ``expected``."""
    centred = expected - expected.mean(axis=0)
    spread = (centred**2).sum(axis=0)
    gain = np.divide((centred * (measured - measured.mean(axis=0))).sum(axis=0), spread, out=np.ones(spread.shape), where=spread > 0)
    offset = measured.mean(axis=0) - gain * expected.mean(axis=0)
    return gain, offset


def calibrate_columns(
    driver: ArrayDriver, plan: TilePlan, target_s: np.ndarray, *, vectors: int = 16, seed: int = 0, read_voltage_v: float | None = None,
) -> dict[str, np.ndarray]:
    """Fit gain and offset of every used physical column, tile by tile, in plan order.

    Args:
        target_s: the conductance each cell was programmed to, in :func:`~cim_runtime.mapping.cell_targets` order.
        vectors: test vectors per tile; at least 2.

    Returns:
        ``gain`` (dimensionless) and ``offset_a`` (amperes), one entry per physical column of each tile.
    """
    if vectors < 2:
        raise ConfigError(f"vectors={vectors} is invalid: a line fit needs at least 2 test vectors")
    info = driver.info()
    voltage_v = info.default_read_voltage_v if read_voltage_v is None else read_voltage_v
    rng = np.random.default_rng(seed)
    gains, offsets = [], []
    start = 0
    for tile in plan.tiles:
        stop = start + 2 * tile.rows * tile.cols
        conductance_s = target_s[start:stop].reshape(tile.rows, 2 * tile.cols)
        drive_v = rng.uniform(0.0, voltage_v, (vectors, tile.rows))
        voltages_v = np.zeros((vectors, info.rows))
        voltages_v[:, tile.array_row : tile.array_row + tile.rows] = drive_v
        measured_a = driver.mvm(voltages_v, array=tile.array)[:, tile.array_col : tile.array_col + 2 * tile.cols]
        gain, offset = fit_lines(drive_v @ conductance_s, measured_a)
        gains.append(gain)
        offsets.append(offset)
        start = stop
    return {"gain": np.concatenate(gains), "offset_a": np.concatenate(offsets)}


def calibration_summary(calibration: dict[str, np.ndarray]) -> dict:
    gain, offset = calibration["gain"], calibration["offset_a"]
    return {"columns": int(gain.size), "gain_mean": float(gain.mean()), "gain_std": float(gain.std()),
            "gain_min": float(gain.min()), "gain_max": float(gain.max()), "offset_abs_max_a": float(np.abs(offset).max())}
