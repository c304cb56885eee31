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

from cim_runtime.device.config import DeviceConfig, PulseLaw
from cim_runtime.errors import ConfigError

SCHEMES = ("fixed", "amplitude-ramp", "width-ramp", "adaptive")
#: Smallest pulse the adaptive scheme requests, in nominal pulses.
MIN_ADAPTIVE_PULSES = 0.01
#: Cells per block when the adaptive scheme evaluates the device model.
MODEL_BLOCK = 1 << 20


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


class DeviceStepModel:
    """The conductance change a device model predicts for a pulse, from where a cell is on its curve."""

    def __init__(self, device: DeviceConfig):
        self.curve = device.response.build()
        self.low_s = device.response.conductance_min_s
        self.window_s = device.response.window_s
        self.law_up, self.law_down = device.law_up, device.law_down

    def move_s(self, conductance_s: np.ndarray, direction: np.ndarray, pulses) -> np.ndarray:
        """Magnitude of the change, in siemens, that ``pulses`` nominal pulses in ``direction`` cause."""
        pulses = np.broadcast_to(np.asarray(pulses, dtype=np.float64), np.shape(conductance_s))
        if conductance_s.size <= MODEL_BLOCK:
            return self._move_block_s(conductance_s, direction, pulses)
        # Blocks bound the temporaries of the curve evaluation when tens of millions of cells start at once.
        return np.concatenate([self._move_block_s(conductance_s[start : start + MODEL_BLOCK], direction[start : start + MODEL_BLOCK],
                                                  pulses[start : start + MODEL_BLOCK])
                               for start in range(0, conductance_s.size, MODEL_BLOCK)])

    def _move_block_s(self, conductance_s, direction, pulses) -> np.ndarray:
        x = np.clip((conductance_s - self.low_s) / self.window_s, 0.0, 1.0)
        up = direction > 0
        moved = np.empty_like(x)
        moved[up] = self.curve.up(x[up], pulses[up])
        moved[~up] = self.curve.down(x[~up], pulses[~up])
        return np.abs(moved - x) * self.window_s


class AdaptiveScheme(PulseScheme):
    """Predict the pulse each cell needs; see the module docstring.

    With a device model, the expected change per nominal pulse comes from the model at the cell's
    present conductance and direction, times a factor each cell learns from its own pulses. Without
    one, each cell learns the change itself, starting from the window divided by ``adaptive_levels``.
    """

    def __init__(self, config, count, law: PulseLaw, window_s: float, device: DeviceConfig | None = None):
        super().__init__(config, count)
        self.model = DeviceStepModel(device) if device is not None else None
        self.law_up, self.law_down = (device.law_up, device.law_down) if device is not None else (law, law)
        # float32 keeps four numbers per cell affordable for tens of millions of cells.
        # One learned number per cell: the step itself without a model, the model's error factor with one.
        learned = (1.0, np.float32) if self.model is not None else (window_s / config.adaptive_levels, np.float32)
        self.step_s = self.factor = np.full(count, learned[0], dtype=learned[1])
        self.last_measured_s = np.full(count, np.nan, dtype=np.float32)
        self.last_pulses = np.zeros(count, dtype=np.float32)
        self.aim = np.full(count, config.adaptive_aim, dtype=np.float32)
        self._floor_s = window_s / config.adaptive_levels / 20
        self._ceiling_s = window_s / config.adaptive_levels * 8

    def _learn(self, cells, measured_s):
        """Update each cell's estimate from what its last pulse did.

        Pulses below a tenth of a nominal pulse teach nothing, because read noise would swamp the
        change they cause.
        """
        moved = np.abs(measured_s - self.last_measured_s[cells])
        known = np.isfinite(moved) & (self.last_pulses[cells] >= 0.1)
        taught = cells[known]
        if self.model is None:
            observed = np.clip(moved[known] / self.last_pulses[taught], self._floor_s, self._ceiling_s)
            self.step_s[taught] = 0.5 * self.step_s[taught] + 0.5 * observed
            return
        predicted = self.model.move_s(self.last_measured_s[taught].astype(np.float64), self.direction[taught], self.last_pulses[taught])
        ratio = np.clip(moved[known] / np.maximum(predicted, self._floor_s), 0.2, 5.0)
        self.factor[taught] = 0.5 * self.factor[taught] + 0.5 * ratio

    def _expected_step_s(self, cells, target_direction, measured_s) -> np.ndarray:
        if self.model is None:
            return self.step_s[cells]
        predicted = self.model.move_s(measured_s, target_direction, 1.0)
        return np.clip(self.factor[cells] * predicted, self._floor_s, self._ceiling_s)

    def _amplitude_for(self, needed: np.ndarray, target_direction: np.ndarray) -> np.ndarray:
        """Invert each direction's pulse law at ``width_s``: n = ((V - V_th) / (V_nom - V_th)) ** exponent * width factor."""
        amplitude = np.empty(needed.shape)
        for law, chosen in ((self.law_up, target_direction > 0), (self.law_down, target_direction < 0)):
            width_factor = (self.config.width_s / law.nominal_width_s) ** law.width_exponent
            overdrive = (needed[chosen] / width_factor) ** (1.0 / law.amplitude_exponent)
            amplitude[chosen] = law.threshold_v + overdrive * (law.nominal_amplitude_v - law.threshold_v)
        return np.minimum(amplitude, self.config.max_amplitude_v)

    def _pulses_of(self, amplitude: np.ndarray, target_direction: np.ndarray) -> np.ndarray:
        up = target_direction > 0
        return np.where(up, self.law_up.nominal_pulses(amplitude, self.config.width_s),
                        self.law_down.nominal_pulses(amplitude, self.config.width_s))

    def choose(self, cells, target_direction, error_s, measured_s):
        config = self.config
        self._learn(cells, measured_s)
        # An overshoot means the step estimate ran high for this stretch of the curve: aim shorter.
        reversed_now = cells[self.direction[cells] == -target_direction]
        self.aim[reversed_now] *= config.adaptive_reversal_shrink
        # At least a hundredth of a nominal pulse, so that no pulse sits at the threshold and does nothing.
        needed = np.maximum(self.aim[cells] * np.abs(error_s) / self._expected_step_s(cells, target_direction, measured_s),
                            MIN_ADAPTIVE_PULSES)
        amplitude = self._amplitude_for(needed, target_direction)
        self.last_pulses[cells] = self._pulses_of(amplitude, target_direction)
        self.last_measured_s[cells] = measured_s
        self.direction[cells] = target_direction
        return amplitude, config.width_s


def make_scheme(config, count: int, window_s: float, law: PulseLaw | None = None, min_width_s: float = 0.0,
                device: DeviceConfig | None = None) -> PulseScheme:
    """Build the scheme that ``config.scheme`` names, with state for ``count`` cells."""
    if config.scheme == "fixed":
        return FixedScheme(config, count)
    if config.scheme == "amplitude-ramp":
        return AmplitudeRampScheme(config, count)
    if config.scheme == "width-ramp":
        return WidthRampScheme(config, count, min_width_s)
    if config.scheme == "adaptive":
        return AdaptiveScheme(config, count, law or PulseLaw(), window_s, device)
    raise ConfigError(f"write-verify scheme {config.scheme!r} is invalid: use one of {', '.join(SCHEMES)}")
