"""Pulse schemes of write-verify: which amplitude and width each unfinished cell gets next.

All schemes share one interface, so their costs can be compared on the same targets:

* ``fixed``: every pulse has ``start_amplitude_v`` and ``width_s``.
* ``amplitude-ramp`` (default): the amplitude grows by ``amplitude_step_v`` on each repeated pulse in
  one direction, up to ``max_amplitude_v``. A reversal restarts it from a lower start, as described in
  :mod:`cim_runtime.programming.write_verify`.
* ``width-ramp``: the amplitude stays at ``start_amplitude_v`` and the width grows by
  ``width_ramp_factor`` on each repeated pulse, up to ``max_width_s``. A reversal restarts from a
  start width that each reversal multiplies by ``reversal_shrink``, down to the backend's minimum.
* ``adaptive``: each cell predicts the pulse it needs from the pulse law of the device model and its
  own history. It keeps an estimate of its conductance change per nominal pulse (first the window
  divided by ``adaptive_levels``, then updated from every pulse it took), requests ``adaptive_aim``
  of the remaining error, and inverts the pulse law for the amplitude at ``width_s``. Each overshoot
  multiplies that cell's aim by ``adaptive_reversal_shrink``.
"""

from __future__ import annotations

import numpy as np

from cim_runtime.device.config import PulseLaw
from cim_runtime.errors import ConfigError

SCHEMES = ("fixed", "amplitude-ramp", "width-ramp", "adaptive")
#: Smallest pulse the adaptive scheme requests, in nominal pulses.
MIN_ADAPTIVE_PULSES = 0.01


class PulseScheme:
    """Base of the schemes: per-cell state sized once, then one choice per round."""

    def __init__(self, config, count: int):
        self.config = config
        self.direction = np.zeros(count, dtype=np.int8)

    def choose(self, cells: np.ndarray, target_direction: np.ndarray, error_s: np.ndarray, measured_s: np.ndarray):
        """Return (amplitude magnitudes in V, widths in s) for ``cells``, which move in ``target_direction`` (+1 up, -1 down)."""
        raise NotImplementedError


class FixedScheme(PulseScheme):
    def choose(self, cells, target_direction, error_s, measured_s):
        return np.full(cells.size, self.config.start_amplitude_v), self.config.width_s


class AmplitudeRampScheme(PulseScheme):
    def __init__(self, config, count):
        super().__init__(config, count)
        self.amplitude = np.zeros(count)
        self.start_amplitude = np.full(count, config.start_amplitude_v)

    def choose(self, cells, target_direction, error_s, measured_s):
        config = self.config
        repeated = target_direction == self.direction[cells]
        reversed_now = self.direction[cells] == -target_direction
        self.start_amplitude[cells[reversed_now]] = config.min_amplitude_v + config.reversal_shrink * (
            self.start_amplitude[cells[reversed_now]] - config.min_amplitude_v
        )
        self.amplitude[cells] = np.where(
            repeated, np.minimum(self.amplitude[cells] + config.amplitude_step_v, config.max_amplitude_v), self.start_amplitude[cells]
        )
        self.direction[cells] = target_direction
        return self.amplitude[cells], self.config.width_s


class WidthRampScheme(PulseScheme):
    def __init__(self, config, count, min_width_s: float):
        super().__init__(config, count)
        self.width = np.full(count, config.width_s)
        self.start_width = np.full(count, config.width_s)
        self.min_width_s = min_width_s

    def choose(self, cells, target_direction, error_s, measured_s):
        config = self.config
        repeated = target_direction == self.direction[cells]
        reversed_now = cells[self.direction[cells] == -target_direction]
        self.start_width[reversed_now] = np.maximum(self.start_width[reversed_now] * config.reversal_shrink, self.min_width_s)
        grown = np.minimum(self.width[cells] * config.width_ramp_factor, config.max_width_s)
        self.width[cells] = np.where(repeated, grown, self.start_width[cells])
        self.direction[cells] = target_direction
        return np.full(cells.size, config.start_amplitude_v), self.width[cells]


class AdaptiveScheme(PulseScheme):
    def __init__(self, config, count, law: PulseLaw, window_s: float):
        super().__init__(config, count)
        self.law = law
        # float32 keeps four numbers per cell affordable for tens of millions of cells.
        self.step_s = np.full(count, window_s / config.adaptive_levels, dtype=np.float32)
        self.last_measured_s = np.full(count, np.nan, dtype=np.float32)
        self.last_pulses = np.zeros(count, dtype=np.float32)
        self.aim = np.full(count, config.adaptive_aim, dtype=np.float32)
        self._floor_s = window_s / config.adaptive_levels / 20
        self._ceiling_s = window_s / config.adaptive_levels * 8

    def _learn(self, cells, measured_s):
        """Update each cell's change per nominal pulse from what its last pulse did.

        Pulses below a tenth of a nominal pulse teach nothing, because read noise would swamp the
        change they cause, and estimates stay between 1/20 and 8 times the first guess.
        """
        moved = np.abs(measured_s - self.last_measured_s[cells])
        known = np.isfinite(moved) & (self.last_pulses[cells] >= 0.1)
        observed = np.clip(moved[known] / self.last_pulses[cells][known], self._floor_s, self._ceiling_s)
        self.step_s[cells[known]] = 0.5 * self.step_s[cells[known]] + 0.5 * observed

    def choose(self, cells, target_direction, error_s, measured_s):
        config, law = self.config, self.law
        self._learn(cells, measured_s)
        # An overshoot means the step estimate ran high for this stretch of the curve: aim shorter.
        reversed_now = cells[self.direction[cells] == -target_direction]
        self.aim[reversed_now] *= config.adaptive_reversal_shrink
        # At least a hundredth of a nominal pulse, so that no pulse sits at the threshold and does nothing.
        needed = np.maximum(self.aim[cells] * np.abs(error_s) / self.step_s[cells], MIN_ADAPTIVE_PULSES)
        # Invert the pulse law at the nominal width: n = ((V - V_th) / (V_nom - V_th)) ** exponent.
        width_factor = (config.width_s / law.nominal_width_s) ** law.width_exponent
        overdrive = (needed / width_factor) ** (1.0 / law.amplitude_exponent)
        amplitude = law.threshold_v + overdrive * (law.nominal_amplitude_v - law.threshold_v)
        amplitude = np.minimum(amplitude, config.max_amplitude_v)
        self.last_pulses[cells] = law.nominal_pulses(amplitude, config.width_s)
        self.last_measured_s[cells] = measured_s
        self.direction[cells] = target_direction
        return amplitude, config.width_s


def make_scheme(config, count: int, window_s: float, law: PulseLaw | None = None, min_width_s: float = 0.0) -> PulseScheme:
    """Build the scheme that ``config.scheme`` names, with state for ``count`` cells."""
    if config.scheme == "fixed":
        return FixedScheme(config, count)
    if config.scheme == "amplitude-ramp":
        return AmplitudeRampScheme(config, count)
    if config.scheme == "width-ramp":
        return WidthRampScheme(config, count, min_width_s)
    if config.scheme == "adaptive":
        return AdaptiveScheme(config, count, law or PulseLaw(), window_s)
    raise ConfigError(f"write-verify scheme {config.scheme!r} is invalid: use one of {', '.join(SCHEMES)}")
