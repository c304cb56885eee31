"""Check a fitted device by simulating the measurement with it and comparing the ramps."""

from __future__ import annotations

import numpy as np

from cim_runtime.characterize.cells import CellSelection
from cim_runtime.characterize.trains import run_train
from cim_runtime.device.fitting import DeviceFit, mean_ramp, ramp_spread
from cim_runtime.device.readers import PulseTrainData
from cim_runtime.driver.simulator import SimulatorDriver

#: Ramps simulated at most, to bound the time of the check.
MAX_SIMULATED_RAMPS = 64


def simulate_like(data: PulseTrainData, fit: DeviceFit, seed: int = 0) -> dict:
    """Cycle as many simulated cells of the fitted device as were measured, as often, with nominal pulses.

    Returns:
        NRMSE of the simulated mean ramp against the measured one, per direction, and the ratio of the
        simulated to the measured ramp-to-ramp spread (1 is a perfect match, NaN for one ramp).
    """
    up_pulses, down_pulses = mean_ramp(data.up).size - 1, mean_ramp(data.down).size - 1
    count = max(1, len(set(data.up_cells)))
    cycles = max(1, min(max(len(data.up), len(data.down)) // count, MAX_SIMULATED_RAMPS))
    simulated_up, simulated_down = [], []
    with SimulatorDriver(fit.config, rows=1, cols=count, arrays=1, seed=seed) as driver:
        cells = CellSelection(0, np.zeros(count, dtype=np.int64), np.arange(count))
        nominal = fit.config.law_up.nominal_amplitude_v
        run_train(driver, cells, -1, np.full(2 * down_pulses, nominal), np.full(2 * down_pulses, fit.config.law_down.nominal_width_s))
        for _ in range(cycles):
            up = run_train(driver, cells, +1, np.full(up_pulses, nominal), np.full(up_pulses, fit.config.law_up.nominal_width_s))
            down = run_train(driver, cells, -1, np.full(down_pulses, fit.config.law_down.nominal_amplitude_v),
                             np.full(down_pulses, fit.config.law_down.nominal_width_s))
            simulated_up += list(up.T)
            simulated_down += list(down.T)
    width = fit.config.response.window_s
    report = {"cells": count, "cycles": cycles}
    for label, measured, simulated in (("up", data.up, simulated_up), ("down", data.down, simulated_down)):
        measured_mean = mean_ramp(measured)
        report[f"nrmse_mean_{label}"] = float(np.sqrt(np.mean((mean_ramp(simulated) - measured_mean) ** 2)) / width)
        measured_spread = ramp_spread(measured)
        report[f"spread_ratio_{label}"] = ramp_spread(simulated) / measured_spread if measured_spread > 0 else float("nan")
    return report
