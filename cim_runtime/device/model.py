"""Table-driven pulse response of a memristor cell, with variation and noise.

The law, applied to every cell in a vectorized way:

* A pulse of amplitude ``V`` and width ``t`` counts as ``n = (|V| - V_th) / (V_nom - V_th) * t / t_nom``
  nominal pulses; ``n = 0`` when ``|V| <= V_th``. The sign of ``V`` selects potentiation (+) or
  depression (-).
* A cell at conductance ``G`` sits at fractional pulse index ``k`` of the measured curve of that
  direction (found by interpolation) and moves to the curve's value at ``k + n``. Past either end of the
  curve the cell saturates; a pulse never moves a cell against its direction.
* Device-to-device variation scales ``n`` by a per-cell log-normal factor drawn once. Cycle-to-cycle
  variation scales it by ``1 + sigma * N(0, 1)`` per pulse, clipped at zero. A read returns
  ``G * (1 + sigma_read * N(0, 1))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cim_runtime.device.presets import PulseTable, linear_table, load_measured_preset
from cim_runtime.errors import ConfigError


@dataclass(frozen=True)
class PulseLaw:
    """How pulse amplitude and width scale the step along the measured curve.

    NOTE: the published tables do not state the pulse amplitude or width behind them. The nominal
    pulse (1.0 V, 100 us) and the 0.5 V threshold are assumptions, the same for every preset.
    """

    #: Amplitude magnitude below which a pulse changes nothing, in volts.
    threshold_v: float = 0.5
    #: Amplitude magnitude of the pulse that moves a cell one table step, in volts.
    nominal_amplitude_v: float = 1.0
    #: Width of that nominal pulse, in seconds.
    nominal_width_s: float = 100e-6

    def __post_init__(self) -> None:
        if not 0 <= self.threshold_v < self.nominal_amplitude_v:
            raise ConfigError(
                f"threshold_v={self.threshold_v} must be at least 0 and below nominal_amplitude_v={self.nominal_amplitude_v}"
            )
        if self.nominal_width_s <= 0:
            raise ConfigError(f"nominal_width_s={self.nominal_width_s} must be positive")

    def nominal_pulses(self, amplitude_v: np.ndarray, width_s: np.ndarray) -> np.ndarray:
        """Return how many nominal pulses each (amplitude, width) pulse is worth."""
        overdrive = (np.abs(amplitude_v) - self.threshold_v) / (self.nominal_amplitude_v - self.threshold_v)
        return np.maximum(overdrive, 0.0) * (np.asarray(width_s) / self.nominal_width_s)


@dataclass(frozen=True)
class DeviceProfile:
    """A pulse table together with the pulse law and the variability of a device population."""

    table: PulseTable
    law: PulseLaw = PulseLaw()
    #: Log-normal sigma of the per-cell step factor (device-to-device variation).
    step_sigma_dtod: float = 0.10
    #: Relative sigma of the step of each pulse (cycle-to-cycle variation).
    step_sigma_ctoc: float = 0.05
    #: Relative sigma of each conductance read.
    read_sigma_rel: float = 0.002
    #: Spread of the as-fabricated conductance above the window minimum, as a fraction of the window.
    initial_spread_rel: float = 0.02

    @property
    def name(self) -> str:
        return self.table.name

    def __post_init__(self) -> None:
        for field_name in ("step_sigma_dtod", "step_sigma_ctoc", "read_sigma_rel", "initial_spread_rel"):
            value = getattr(self, field_name)
            if not 0 <= value < 1:
                raise ConfigError(f"{field_name}={value} is invalid: must be at least 0 and below 1")


def make_profile(name: str) -> DeviceProfile:
    """Build a device profile by preset name; ``ideal`` is linear and free of variation and noise."""
    if name == "ideal":
        return DeviceProfile(linear_table(), step_sigma_dtod=0.0, step_sigma_ctoc=0.0, read_sigma_rel=0.0, initial_spread_rel=0.0)
    return DeviceProfile(load_measured_preset(name))


def _increasing(values: np.ndarray) -> np.ndarray:
    """Make a measured curve strictly increasing so that it can be inverted by interpolation."""
    running_max = np.maximum.accumulate(values)
    return running_max + np.arange(values.size) * 1e-15


class TableDeviceModel:
    """Vectorized cell physics driven by a :class:`DeviceProfile`."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile
        self._up_s = _increasing(profile.table.potentiation_s)
        # The depression curve falls with pulse count; store it reversed so it rises with index.
        self._down_reversed_s = _increasing(profile.table.depression_s[::-1])
        self._up_index = np.arange(self._up_s.size, dtype=np.float64)
        self._down_index = np.arange(self._down_reversed_s.size, dtype=np.float64)

    @property
    def conductance_min_s(self) -> float:
        """Lowest conductance that both curves reach, so every target in the window is reachable."""
        return float(max(self._up_s[0], self._down_reversed_s[0]))

    @property
    def conductance_max_s(self) -> float:
        """Highest conductance that both curves reach."""
        return float(min(self._up_s[-1], self._down_reversed_s[-1]))

    def initial_conductance(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draw as-fabricated conductances near the bottom of the window."""
        window = self.conductance_max_s - self.conductance_min_s
        spread = np.abs(rng.standard_normal(shape)) * self.profile.initial_spread_rel * window
        return self.conductance_min_s + spread

    def step_factors(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draw the per-cell step factor once per cell (device-to-device variation)."""
        sigma = self.profile.step_sigma_dtod
        return np.exp(sigma * rng.standard_normal(shape) - sigma**2 / 2).astype(np.float32)

    def apply_pulses(
        self,
        conductance_s: np.ndarray,
        amplitude_v: np.ndarray,
        width_s: np.ndarray,
        step_factor: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Return the conductances after one pulse on each cell (arrays of equal shape)."""
        pulses = self.profile.law.nominal_pulses(amplitude_v, width_s) * step_factor
        if self.profile.step_sigma_ctoc > 0:
            pulses = pulses * np.maximum(1.0 + self.profile.step_sigma_ctoc * rng.standard_normal(pulses.shape), 0.0)

        up = amplitude_v > 0
        result = np.array(conductance_s, dtype=np.float64, copy=True)
        start_up = np.interp(result[up], self._up_s, self._up_index)
        result[up] = np.maximum(result[up], np.interp(start_up + pulses[up], self._up_index, self._up_s))

        down = ~up
        start_down = np.interp(result[down], self._down_reversed_s, self._down_index)
        moved = np.interp(start_down - pulses[down], self._down_index, self._down_reversed_s)
        result[down] = np.minimum(result[down], moved)
        return result

    def read(self, conductance_s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return noisy reads of the given conductances."""
        if self.profile.read_sigma_rel == 0:
            return np.array(conductance_s, dtype=np.float64, copy=True)
        noise = 1.0 + self.profile.read_sigma_rel * rng.standard_normal(np.shape(conductance_s))
        return conductance_s * noise
