"""Calibrate the ramp-to-ramp variation of a fitted device against the measured spread, by simulation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cim_runtime.device.fit_check import simulate_like
from cim_runtime.device.fitting import DeviceFit
from cim_runtime.device.readers import PulseTrainData

#: Ratio of simulated to measured spread within which calibration stops.
CALIBRATION_TOLERANCE = 1.05
#: Simulations that calibration runs at most, after the first check.
CALIBRATION_ROUNDS = 6
#: Power of the ratio error by which each calibration round scales a sigma. It is above 1 because read and
#: step noise also make spread, so a sigma must change more than the spread it adds to.
CALIBRATION_GAIN = 1.5
#: Nonlinearity spread from which calibration starts, because a sigma of 0 could not be scaled.
MIN_NONLINEARITY_SIGMA = 0.02


def _with_ramp_variation(fit: DeviceFit, sigmas: np.ndarray) -> DeviceFit:
    bottom, top, nonlinearity_up, nonlinearity_down = (float(value) for value in sigmas)
    variation = replace(fit.config.variation, window_min_sigma_ctoc=bottom, window_max_sigma_ctoc=top,
                        nonlinearity_up_sigma_ctoc=nonlinearity_up, nonlinearity_down_sigma_ctoc=nonlinearity_down)
    wander = {**(fit.window_wander or {}), "min_sigma_rel": bottom, "max_sigma_rel": top,
              "nonlinearity_up_sigma_ctoc": nonlinearity_up, "nonlinearity_down_sigma_ctoc": nonlinearity_down, "calibrated": True}
    return replace(fit, config=replace(fit.config, variation=variation), window_wander=wander)


def _calibration_errors(report: dict) -> np.ndarray:
    """Log spread ratios that the bottom shift, the top shift and each nonlinearity spread control most."""
    ratio = {key: np.log(report[key]) for key in report if key.startswith("spread_ratio_")}
    bottom = (ratio["spread_ratio_up_start"] + ratio["spread_ratio_down_end"]) / 2
    top = (ratio["spread_ratio_down_start"] + ratio["spread_ratio_up_end"]) / 2
    return np.array([bottom, top, ratio["spread_ratio_up_middle"], ratio["spread_ratio_down_middle"]])


def calibrate_ramp_variation(data: PulseTrainData, fit: DeviceFit, seed: int = 0) -> tuple[DeviceFit, dict]:
    """Tune the range wander and the cycle-to-cycle nonlinearity spread until simulated ramps spread as the measured ones.

    Each round simulates the measurement with :func:`simulate_like` and scales each sigma by its
    simulated-to-measured spread ratio to the power -CALIBRATION_GAIN. The range bottom follows the
    ratio at the start of the potentiation ramps and the end of the depression ramps. The range top
    follows the start of the depression ramps and the end of the potentiation ramps. The nonlinearity
    spread of each direction (exponential form only) follows the middle of its ramps.
    The correlation of the wander stays as fitted. The round with the smallest largest ratio error is kept.

    Returns:
        The calibrated fit and its simulated check. Where the check already lies within
        CALIBRATION_TOLERANCE, or the fit has no range wander because each cell has too few ramps,
        ``fit`` itself and its check.
    """
    report = simulate_like(data, fit, seed)
    if fit.window_wander is None:
        return fit, report
    exponential = fit.config.response.kind == "exponential"
    # Without the exponential form only the range sigmas can move, so only their errors count.
    adjustable = slice(None) if exponential else slice(0, 2)
    errors = _calibration_errors(report)[adjustable]
    if not np.all(np.isfinite(errors)):
        return fit, report
    best = (float(np.max(np.abs(errors))), fit, report)
    if best[0] <= np.log(CALIBRATION_TOLERANCE):
        return fit, report
    variation = fit.config.variation
    floor = MIN_NONLINEARITY_SIGMA if exponential else 0.0
    sigmas = np.array([max(variation.window_min_sigma_ctoc, 1e-3), max(variation.window_max_sigma_ctoc, 1e-3),
                       max(variation.nonlinearity_up_sigma_ctoc, floor), max(variation.nonlinearity_down_sigma_ctoc, floor)])
    for _ in range(CALIBRATION_ROUNDS):
        sigmas = np.minimum(sigmas * np.exp(-CALIBRATION_GAIN * _calibration_errors(report)), [0.95, 0.95, 5.0, 5.0])
        candidate = _with_ramp_variation(fit, sigmas)
        report = simulate_like(data, candidate, seed)
        error = float(np.max(np.abs(_calibration_errors(report)[adjustable])))
        if error < best[0]:
            best = (error, candidate, report)
        if error <= np.log(CALIBRATION_TOLERANCE):
            break
    return best[1], best[2]
