"""Speed of cells along their curve: timing ramps between steep stretches, and aligning ramps by speed.

A cell with step factor ``f`` moves ``f`` nominal pulses along the response curve per pulse, so its
ramps are the nominal curve with the pulse axis scaled by ``f``.
"""

from __future__ import annotations

import numpy as np

#: Read sigmas that one pulse must move the conductance by on a segment used to time ramps.
STEEP_READ_SIGMAS = 4.0
#: Fraction of the curve, in pulses, inside which ramps are timed.
TIMED_FRACTION = 0.6


def _travel_segments(curve_s: np.ndarray, read_sigma_rel: float) -> tuple[int, int] | None:
    """Pick the first and last steep segment of a curve, between which cells are timed.

    A segment is steep where one pulse moves the conductance by more than STEEP_READ_SIGMAS read
    sigmas, so that the pulse at which a ramp crosses it is well defined. Segments past
    TIMED_FRACTION of the curve are left out, so that slow cells reach both.
    """
    slopes = np.abs(np.diff(curve_s))
    noise = read_sigma_rel * np.abs(curve_s[:-1])
    last = int(TIMED_FRACTION * (curve_s.size - 1))
    steep = np.flatnonzero((slopes > STEEP_READ_SIGMAS * noise) & (slopes > 0))
    steep = steep[(steep >= 1) & (steep < last)]
    if steep.size < 2 or steep[-1] - steep[0] < 3:
        return None
    return int(steep[0]), int(steep[-1])


def _crossing_pulses(conductance_s: np.ndarray, level_s: float, increasing: bool) -> np.ndarray:
    """Return the fractional pulse at which each ramp (a row) first passes ``level_s``, or NaN where it never does."""
    passed = conductance_s >= level_s if increasing else conductance_s <= level_s
    first = np.argmax(passed, axis=1)
    result = np.full(conductance_s.shape[0], np.nan)
    for row, index in enumerate(first):
        if not passed[row, index] or index == 0:
            continue
        before, after = conductance_s[row, index - 1], conductance_s[row, index]
        result[row] = index - 1 + (level_s - before) / (after - before)
    return result


def travel_factors(conductance_s, curve_s, increasing, read_sigma_rel) -> np.ndarray:
    """Return the mean speed of each ramp along the curve in nominal pulses per pulse, or NaN where it cannot be timed.

    A ramp is timed between the middles of two steep segments of the curve: their distance along the
    curve, divided by the pulses the ramp took between them. Timing by crossings keeps the reads on
    flat stretches, whose positions are uncertain, out of the estimate.
    """
    segments = _travel_segments(curve_s, read_sigma_rel)
    if segments is None:
        return np.full(conductance_s.shape[0], np.nan)
    first, last = segments
    start = _crossing_pulses(conductance_s, (curve_s[first] + curve_s[first + 1]) / 2, increasing)
    end = _crossing_pulses(conductance_s, (curve_s[last] + curve_s[last + 1]) / 2, increasing)
    pulses_between = end - start
    timed = pulses_between > 0
    return np.where(timed, (last - first) / np.where(timed, pulses_between, 1.0), np.nan)


def aligned_mean_ramp(ramps: list[np.ndarray], cells: list[int], factors: dict[int, float], length: int) -> np.ndarray:
    """Average ramps after rescaling each cell's pulse axis by its step factor.

    A cell with step factor ``f`` is ``f * k`` nominal pulses along the curve after ``k`` pulses, so
    this average is the ramp of a cell with factor 1. The plain mean over cells blurs the curve,
    because fast and slow cells pass each feature at different pulses.
    """
    index = np.arange(length, dtype=np.float64)
    stacked = np.full((len(ramps), length), np.nan)
    for row, (ramp, cell) in enumerate(zip(ramps, cells)):
        stacked[row] = np.interp(index, factors.get(cell, 1.0) * np.arange(ramp.size), ramp, right=np.nan)
    covered = np.sum(~np.isnan(stacked), axis=0) > 0
    mean = np.nanmean(stacked[:, covered], axis=0)
    return mean if mean.size == length else np.concatenate([mean, np.full(length - mean.size, mean[-1])])
