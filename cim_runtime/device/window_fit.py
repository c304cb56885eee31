"""Fit the slow cycle-to-cycle wander of a cell's range from the ramp-to-ramp spread.

Repeated ramps of one cell often sit above or below their mean as a whole, and a ramp's offset
persists into the next ones: the cell's range wanders from cycle to cycle. The simulator models this
as a standard normal range state per cell that follows a first-order autoregressive process over
reversals and shifts the range bottom and top by their own sigmas (see
:class:`~cim_runtime.device.config.VariationConfig`).

* The correlation comes from the lag-one autocorrelation of the ramp offsets (a ramp's mean deviation
  from its cell's mean ramp). Ramps of one direction lie two reversals apart, so the correlation per
  reversal is its square root.
* The bottom sigma comes from the spread at the start of the potentiation ramps and the top sigma
  from the start of the depression ramps, less read noise. There a ramp has only just left the
  range end, so its own step noise has not yet added to the spread.
* Both sigmas are scaled up by the share of a correlated series' variance that a sample of that many
  ramps misses, so that a simulation of as many cycles shows the measured spread on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Fraction of a ramp's first reads whose mean is its start point.
START_FRACTION = 0.05
#: Ramps per cell and direction below which no wander is fitted: a wander that persists over cycles
#: needs many cycles to show, and with few the start spread mostly reflects how far each cell got.
MIN_WANDER_RAMPS = 10
#: Maximum correlation per reversal that the fit returns, because a random walk has no stationary sigma.
MAX_CORRELATION = 0.99


@dataclass(frozen=True)
class WindowWander:
    """Range wander parameters, sigmas relative to the range width."""

    min_sigma_rel: float
    max_sigma_rel: float
    correlation: float


def _cell_ramps(ramps: list[np.ndarray], cells: list[int]) -> list[np.ndarray]:
    """Stack each cell's ramps, in measurement order, to their common length: one (ramps, reads) array per cell."""
    length = min(ramp.size for ramp in ramps)
    groups = np.asarray(cells) if len(cells) == len(ramps) else np.zeros(len(ramps), dtype=int)
    stacked = np.stack([ramp[:length] for ramp in ramps])
    return [stacked[groups == cell] for cell in np.unique(groups) if np.sum(groups == cell) >= 2]


def _lag_one_correlation(groups: list[np.ndarray]) -> float:
    """Return the pooled lag-one autocorrelation of ramp offsets within cells, or 0 where no cell has 3 ramps."""
    products = squares = 0.0
    for ramps in groups:
        if ramps.shape[0] < 3:
            continue
        offsets = (ramps - ramps.mean(axis=0)).mean(axis=1)
        products += float(np.sum(offsets[:-1] * offsets[1:]))
        squares += float(np.sum(offsets**2) * (offsets.size - 1) / offsets.size)
    return products / squares if squares > 0 else 0.0


def _start_variance(groups: list[np.ndarray], read_variance_s2: float) -> float:
    """Return the variance of ramp start points within cells, less read noise, in square siemens."""
    deviations = []
    for ramps in groups:
        reads = max(1, int(round(START_FRACTION * ramps.shape[1])))
        starts = ramps[:, :reads].mean(axis=1)
        deviations.append((starts - starts.mean()) * np.sqrt(starts.size / (starts.size - 1)))
    reads = max(1, int(round(START_FRACTION * groups[0].shape[1])))
    return max(float(np.mean(np.concatenate(deviations) ** 2)) - read_variance_s2 / reads, 0.0)


def sample_variance_share(correlation: float, count: int) -> float:
    """Return the expected ratio of the sample variance to the stationary variance of ``count`` values
    of a first-order autoregressive series with lag-one ``correlation``."""
    if count < 2:
        return 1.0
    lags = np.arange(1, count)
    return float(1.0 - 2.0 / (count * (count - 1)) * np.sum((count - lags) * correlation**lags))


def fit_window_wander(data, width_s: float, read_sigma_s: float) -> WindowWander | None:
    """Fit the range wander to the ramps of ``data`` (a PulseTrainData).

    Returns:
        None where the cells have fewer than MIN_WANDER_RAMPS ramps per direction on average.
    """
    up, down = _cell_ramps(data.up, data.up_cells), _cell_ramps(data.down, data.down_cells)
    if not up or not down or min(np.mean([ramps.shape[0] for ramps in group]) for group in (up, down)) < MIN_WANDER_RAMPS:
        return None
    ramp_correlation = float(np.clip((_lag_one_correlation(up) + _lag_one_correlation(down)) / 2, 0.0, MAX_CORRELATION**2))
    ramps_per_cell = int(round(np.mean([ramps.shape[0] for ramps in up + down])))
    share = sample_variance_share(ramp_correlation, ramps_per_cell)
    bottom = np.sqrt(_start_variance(up, read_sigma_s**2) / share) / width_s
    top = np.sqrt(_start_variance(down, read_sigma_s**2) / share) / width_s
    return WindowWander(float(min(bottom, 0.95)), float(min(top, 0.95)), float(np.sqrt(ramp_correlation)))
