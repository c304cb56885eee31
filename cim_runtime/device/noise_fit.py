"""Estimate step noise, read noise and the cell-to-cell step spread from ramps, on the fitted curve.

Every read is mapped to its position on the fitted curve of its direction, in nominal pulses. There
the simulator's physics is simple: a cell with step factor ``f`` moves ``f * (1 + step_sigma * eps)``
pulses per pulse, wherever it is on the curve, and a relative read error ``read_sigma * G * eps``
moves the observed position by ``read_sigma * G / slope``. Estimators in conductance units, by
contrast, mix both noises with the curvature of the ramp: a cell that lands a little further along a
curved ramp takes a different next step.

* Read noise comes from repeated reads where the data include them: a read-noise file, or the two
  reads between consecutive trains of a ``cim-run characterize`` file. Otherwise it comes from the
  covariance of neighbouring step deviations, ``-(read_sigma * G / slope) ** 2``, because a read
  error enters two neighbouring steps with opposite signs.
* Step noise is how fast the variance of a cell's travel over a span of pulses grows with the span,
  relative to the cell's own step factor (see :func:`_step_variance`).
* The cell-to-cell step spread is the spread of the log of each cell's speed along the curve, less
  the part that the scatter of one cell's ramps explains. A ramp's speed is timed between two steep
  stretches of the curve (see :mod:`cim_runtime.device.cell_speed`).

Steps where a cell may already have reached the end of its curve are left out, because a saturated
cell stops moving whatever its step factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cim_runtime.device.cell_speed import travel_factors
from cim_runtime.device.response import increasing_curve

#: Pulses kept clear of the curve's end, so that no cell in the estimate has stopped there.
END_MARGIN_PULSES = 2.0
#: Maximum span of the travel variogram, in pulses. Longer spans add little but mapping errors.
MAX_SPAN_PULSES = 20
#: Rounds of the reweighted variogram fit, each weighing by the fit of the round before.
ITERATIONS = 3


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise parameters of the simulator's device model, measured from ramps."""

    #: Relative sigma of the step of each pulse.
    step_sigma_ctoc: float
    #: Relative sigma of each read.
    read_sigma_rel: float
    #: ``repeated reads`` or ``step covariance``.
    read_source: str
    #: Log-normal sigma of the per-cell step factor, or None where fewer than 3 cells have timed ramps.
    step_sigma_dtod: float | None
    #: Step factor of each cell (mean 1) where ``step_sigma_dtod`` is measured, and empty otherwise.
    speed_factors: dict[int, float]


@dataclass
class _CellRamps:
    """Ramps of one cell in one direction, on the curve: arrays of shape (ramps, reads)."""

    key: tuple[str, int]
    conductance_s: np.ndarray
    position: np.ndarray
    #: Position error per unit of relative read sigma, ``G / slope``, in pulses.
    read_scale: np.ndarray
    #: Steps (pulse index k, from read k to k + 1) that enter the estimates.
    valid: np.ndarray
    #: Speed of each ramp along the curve in nominal pulses per pulse, NaN where it cannot be timed.
    factors: np.ndarray


def curve_positions(values_s: np.ndarray, curve_s: np.ndarray, increasing: bool) -> tuple[np.ndarray, np.ndarray]:
    """Map conductances onto fractional pulse positions of a monotonic curve, and return the slope there too.

    Returns:
        ``(position, slope_s)``: position in pulses from the curve's start, and the absolute slope of
        the curve's segment at that position in siemens per pulse.
    """
    curve = np.asarray(curve_s, dtype=np.float64)
    ordered = increasing_curve(curve if increasing else curve[::-1])
    index = np.arange(curve.size, dtype=np.float64)
    position = np.interp(values_s, ordered, index)
    if not increasing:
        position = curve.size - 1 - position
    segment = np.clip(np.floor(position).astype(int), 0, curve.size - 2)
    slopes = np.abs(np.diff(curve))
    # A flat curve (a stuck cell) has no slope, so the floor keeps read errors finite there.
    floor = 1e-9 * max(float(np.ptp(curve)), float(np.max(np.abs(curve))), 1e-30)
    return position, np.maximum(slopes[segment], floor)


def _cell_ramps(ramps, cells, curve_s, increasing, label, read_sigma_rel) -> list[_CellRamps]:
    length = min(min(ramp.size for ramp in ramps), curve_s.size)
    groups = np.asarray(cells) if len(cells) == len(ramps) else np.zeros(len(ramps), dtype=int)
    stacked = np.stack([ramp[:length] for ramp in ramps])
    result = []
    for cell in np.unique(groups):
        conductance = stacked[groups == cell]
        position, slope = curve_positions(conductance, curve_s, increasing)
        # The first step may jump onto the curve from the other direction's end, so it is left out.
        reach = position.mean(axis=0)[1:]
        valid = (np.arange(length - 1) >= 1) & (reach <= curve_s.size - 1 - END_MARGIN_PULSES)
        factors = travel_factors(conductance, curve_s, increasing, read_sigma_rel)
        result.append(_CellRamps((label, int(cell)), conductance, position, np.abs(conductance) / slope, valid, factors))
    return result


def _step_deviations(cell: _CellRamps) -> np.ndarray:
    """Deviation of each step from the cell's mean step at the same pulse, corrected to unbiased variance."""
    steps = np.diff(cell.position, axis=1)
    count = steps.shape[0]
    return (steps - steps.mean(axis=0)) * np.sqrt(count / (count - 1))


def _read_variance_from_covariance(groups: list[_CellRamps]) -> float:
    """Estimate the relative read variance from the covariance of neighbouring step deviations."""
    numerator = denominator = 0.0
    for cell in groups:
        deviation = _step_deviations(cell)
        pairs = cell.valid[:-1] & cell.valid[1:]
        if not pairs.any():
            continue
        covariance = (deviation[:, :-1] * deviation[:, 1:]).mean(axis=0)[pairs]
        shared_read = (cell.read_scale[:, 1:-1] ** 2).mean(axis=0)[pairs]
        # Pairs where the read error is large against the step spread carry most of the information.
        weight = 1.0 / (1.0 + shared_read / max(np.median(shared_read), 1e-300))
        numerator -= float(np.sum(weight * covariance))
        denominator += float(np.sum(weight * shared_read))
    return max(numerator / denominator, 0.0) if denominator > 0 else 0.0


def _cycle_factors(cell: _CellRamps) -> np.ndarray:
    """Speeds of the ramps of a cell that could be timed."""
    return cell.factors[np.isfinite(cell.factors)]


def _travel_variogram(groups: list[_CellRamps], reads: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared deviation of the travel between reads k and k + m, over cells and ramps.

    Deviations are from each cell's mean ramp, in units of the cell's own speed, so cells of different
    speed pool. Returns arrays of shape (reads, MAX_SPAN_PULSES + 1): the mean and the sample count.
    """
    total = np.zeros((reads, MAX_SPAN_PULSES + 1))
    count = np.zeros_like(total)
    for cell in groups:
        timed = _cycle_factors(cell)
        factor = float(np.mean(timed)) if timed.size else 1.0
        ramps = cell.position.shape[0]
        deviation = (cell.position - cell.position.mean(axis=0)) * np.sqrt(ramps / (ramps - 1)) / max(factor, 1e-12)
        steps = np.flatnonzero(cell.valid)
        first, last = int(steps.min()), int(steps.max()) + 1
        for span in range(1, min(MAX_SPAN_PULSES, last - first) + 1):
            start = np.arange(first, last - span + 1)
            total[start, span] += np.sum((deviation[:, start + span] - deviation[:, start]) ** 2, axis=0)
            count[start, span] += ramps
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), count


def _step_variance(groups: list[_CellRamps]) -> float | None:
    """Estimate the relative step variance from how fast travel deviations grow with the span.

    A cell's position is a random walk, whose variance grows by ``step_sigma ** 2`` per pulse, seen
    through an error at each read. So the travel between reads k and k + m has the variance
    ``step_sigma ** 2 * m + c_k + c_(k+m)``, where ``c_k`` is the error variance of read k. The error
    variances are fitted as free parameters per read and direction, and not taken from the read-noise
    model, because on a curve with flat stretches a read's position error follows no simple law.
    """
    blocks = []
    for direction in ("up", "down"):
        own = [cell for cell in groups if cell.key[0] == direction and cell.valid.any()]
        if own:
            reads = min(cell.position.shape[1] for cell in own)
            blocks.append(_travel_variogram(own, reads))
    if not blocks:
        return None
    rows, values, counts = [], [], []
    offset = 1
    for variogram, count in blocks:
        start, span = np.nonzero(count)
        design = np.zeros((start.size, 1 + sum(block[0].shape[0] for block in blocks)))
        design[:, 0] = span
        np.add.at(design, (np.arange(start.size), offset + start), 1.0)
        np.add.at(design, (np.arange(start.size), offset + start + span), 1.0)
        rows.append(design)
        values.append(variogram[start, span])
        counts.append(count[start, span])
        offset += variogram.shape[0]
    design, value, count = np.concatenate(rows), np.concatenate(values), np.concatenate(counts)
    floor = max(float(np.median(value)) * 1e-3, 1e-12)
    fitted = np.maximum(value, floor)
    variance = 0.0
    for _ in range(ITERATIONS):
        # A mean of n squared normal deviations has the variance 2 * expected ** 2 / n.
        weight = np.sqrt(count) / fitted
        weighted = design * weight[:, None]
        # The normal equations are small (one column per read); lstsq copes with reads no span uses.
        solution = np.linalg.lstsq(weighted.T @ weighted, weighted.T @ (value * weight), rcond=None)[0]
        variance = max(float(solution[0]), 0.0)
        fitted = np.maximum(design @ solution, floor)
    return variance


def _cell_log_factors(groups: list[_CellRamps]) -> dict[int, np.ndarray]:
    """Log of the speed of each timed ramp, per cell, centred per direction."""
    logs: dict[int, list[np.ndarray]] = {}
    for direction in ("up", "down"):
        own = [cell for cell in groups if cell.key[0] == direction and cell.valid.any()]
        if not own:
            continue
        factors = [np.log(np.maximum(_cycle_factors(cell), 1e-12)) for cell in own]
        if not any(values.size for values in factors):
            continue
        # Each direction's curve has its own pulse scale, so compare cells within a direction.
        centre = float(np.mean(np.concatenate(factors)))
        for cell, values in zip(own, factors):
            logs.setdefault(cell.key[1], []).append(values - centre)
    return {cell: np.concatenate(values) for cell, values in logs.items() if sum(v.size for v in values) >= 1}


def _dtod_sigma(logs: dict[int, np.ndarray]) -> float:
    """Log-normal sigma of the per-cell step factor, less the sampling noise of each cell's mean."""
    means = np.array([values.mean() for values in logs.values()])
    # The scatter of a cell's ramps around its own mean measures the sampling noise of that mean.
    sampling = np.mean([values.var(ddof=1) / values.size for values in logs.values() if values.size >= 2] or [0.0])
    return float(np.sqrt(max(means.var(ddof=1) - sampling, 0.0)))


def _speed_factors(logs: dict[int, np.ndarray]) -> dict[int, float]:
    """Step factor of each cell, scaled so that the factors average 1 as the simulator's draws do."""
    factors = {cell: float(np.exp(values.mean())) for cell, values in logs.items()}
    scale = float(np.mean(list(factors.values())))
    return {cell: factor / scale for cell, factor in factors.items()}


def _groups(data, curve_up_s, curve_down_s, read_sigma_rel: float) -> list[_CellRamps]:
    groups = _cell_ramps(data.up, data.up_cells, curve_up_s, True, "up", read_sigma_rel)
    groups += _cell_ramps(data.down, data.down_cells, curve_down_s, False, "down", read_sigma_rel)
    return [cell for cell in groups if cell.conductance_s.shape[0] >= 2]


def estimate_noise(data, curve_up_s: np.ndarray, curve_down_s: np.ndarray) -> NoiseEstimate | None:
    """Estimate the noise parameters of ``data`` (a PulseTrainData) on the fitted curves.

    Returns:
        None where no cell has two ramps of one direction or no ramp has two steps short of its
        curve's end, because then nothing separates noise from the curve's shape.
    """
    groups = _groups(data, curve_up_s, curve_down_s, 0.0)
    if not groups:
        return None
    if data.repeated_reads_s:
        read_variance, source = repeated_read_variance(data.repeated_reads_s), "repeated reads"
    else:
        read_variance, source = _read_variance_from_covariance(groups), "step covariance"
    # Now that the read sigma is known, time the ramps only across segments that it cannot blur.
    groups = _groups(data, curve_up_s, curve_down_s, float(np.sqrt(read_variance)))
    step_variance = _step_variance(groups)
    if step_variance is None:
        # No ramp stays on its curve for two steps, so nothing separates noise from the curve.
        return None
    logs = _cell_log_factors(groups)
    step_sigma, read_sigma = float(np.sqrt(step_variance)), float(np.sqrt(read_variance))
    if len(logs) < 3:
        return NoiseEstimate(step_sigma, read_sigma, source, None, {})
    return NoiseEstimate(step_sigma, read_sigma, source, _dtod_sigma(logs), _speed_factors(logs))


def repeated_read_variance(series: list[np.ndarray]) -> float:
    """Pooled relative variance of repeated reads of unchanged cells (one array of reads per cell and level)."""
    usable = [np.asarray(reads, dtype=np.float64) for reads in series if len(reads) >= 2 and np.mean(reads) > 0]
    if not usable:
        return 0.0
    return float(np.mean([reads.var(ddof=1) / reads.mean() ** 2 for reads in usable]))
