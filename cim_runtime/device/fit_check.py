"""Check a fitted device by simulating the measurement with it and comparing the ramps."""

from __future__ import annotations

import numpy as np

from cim_runtime.characterize.cells import CellSelection
from cim_runtime.characterize.trains import run_train
from cim_runtime.device.fitting import DeviceFit, mean_ramp
from cim_runtime.device.readers import PulseTrainData
from cim_runtime.driver.simulator import SimulatorDriver

#: Ramps simulated at most per cell, to bound the time of the check.
MAX_SIMULATED_RAMPS = 64
#: Cells simulated at least: the measured set is repeated on fresh cells until it has this many, so
#: that the simulated spread does not hang on one draw of a slowly wandering cell.
MIN_SIMULATED_CELLS = 32
#: Ramp positions at which the spread is compared, as (name, first, last) fractions of the ramp.
SPREAD_WINDOWS = (("start", 0.0, 0.1), ("middle", 0.45, 0.55), ("end", 0.9, 1.0))


def spread_variance(ramps: list[np.ndarray], length: int) -> np.ndarray:
    """Variance across ramps at each of the first ``length`` pulses (ramps shorter than that are left out)."""
    stacked = np.stack([ramp[:length] for ramp in ramps if ramp.size >= length])
    return np.var(stacked, axis=0, ddof=1)


def _window(values: np.ndarray, first: float, last: float) -> float:
    start = int(np.floor(first * (values.size - 1)))
    stop = max(int(np.ceil(last * (values.size - 1))) + 1, start + 1)
    return float(np.mean(values[start:stop]))


def _simulate(data: PulseTrainData, fit: DeviceFit, cells: int, cycles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cycle ``cells`` fresh cells; return reads of shape (cycles, pulses + 1, cells) per direction."""
    up_pulses, down_pulses = mean_ramp(data.up).size - 1, mean_ramp(data.down).size - 1
    law_up, law_down = fit.config.law_up, fit.config.law_down
    ups, downs = [], []
    with SimulatorDriver(fit.config, rows=1, cols=cells, arrays=1, seed=seed) as driver:
        selection = CellSelection(0, np.zeros(cells, dtype=np.int64), np.arange(cells))
        run_train(driver, selection, -1, np.full(2 * down_pulses, law_down.nominal_amplitude_v), np.full(2 * down_pulses, law_down.nominal_width_s))
        for _ in range(cycles):
            ups.append(run_train(driver, selection, +1, np.full(up_pulses, law_up.nominal_amplitude_v), np.full(up_pulses, law_up.nominal_width_s)))
            downs.append(run_train(driver, selection, -1, np.full(down_pulses, law_down.nominal_amplitude_v),
                                   np.full(down_pulses, law_down.nominal_width_s)))
    return np.stack(ups), np.stack(downs)


def _compare_spread(report: dict, label: str, measured: list[np.ndarray], simulated: np.ndarray, count: int) -> None:
    """Add the simulated-to-measured spread ratios of one direction to ``report``."""
    length = min(min(ramp.size for ramp in measured), simulated.shape[1])
    measured_variance = spread_variance(measured, length) if len(measured) >= 2 else np.zeros(length)
    # Each replica of the measured cell set gives one spread; average their variances.
    simulated_variance = _replica_variance(simulated, count, length)
    measured_sigma, simulated_sigma = np.sqrt(measured_variance), np.sqrt(simulated_variance)
    overall = float(np.mean(measured_sigma))
    report[f"spread_ratio_{label}"] = float(np.mean(simulated_sigma)) / overall if overall > 0 else float("nan")
    for name, first, last in SPREAD_WINDOWS:
        reference = _window(measured_sigma, first, last)
        report[f"spread_ratio_{label}_{name}"] = _window(simulated_sigma, first, last) / reference if reference > 0 else float("nan")


def _replica_variance(simulated: np.ndarray, count: int, length: int) -> np.ndarray:
    """Variance across ramps at each pulse, averaged over the replicas of the measured cell set."""
    replicas = simulated.shape[2] // count
    return np.mean([spread_variance(list(simulated[:, :length, r * count:(r + 1) * count].transpose(0, 2, 1).reshape(-1, length)), length)
                    for r in range(replicas)], axis=0)


def simulate_like(data: PulseTrainData, fit: DeviceFit, seed: int = 0) -> dict:
    """Cycle simulated cells of the fitted device as often as the measured ones, with nominal pulses.

    The measured cell set is repeated on fresh simulated cells up to MIN_SIMULATED_CELLS cells.

    Returns:
        NRMSE of the simulated mean ramp against the measured one, per direction, and the ratio of the
        simulated to the measured ramp-to-ramp spread (1 is a perfect match, NaN for one ramp):
        averaged over the ramp, and at its start, middle and end (SPREAD_WINDOWS).
    """
    count = max(1, len(set(data.up_cells)))
    cycles = max(1, min(max(len(data.up), len(data.down)) // count, MAX_SIMULATED_RAMPS))
    replicas = max(1, -(-MIN_SIMULATED_CELLS // count))
    simulated_up, simulated_down = _simulate(data, fit, count * replicas, cycles, seed)
    width = fit.config.response.window_s
    report = {"cells": count, "cycles": cycles, "replicas": replicas}
    for label, measured, simulated in (("up", data.up, simulated_up), ("down", data.down, simulated_down)):
        simulated_mean = simulated.mean(axis=(0, 2))
        measured_mean = mean_ramp(measured)
        length = min(simulated_mean.size, measured_mean.size)
        report[f"nrmse_mean_{label}"] = float(np.sqrt(np.mean((simulated_mean[:length] - measured_mean[:length]) ** 2)) / width)
        _compare_spread(report, label, measured, simulated, count)
    return report
