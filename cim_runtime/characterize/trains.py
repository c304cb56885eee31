"""Pulse trains and ramp pulse series (RPS), measured through the driver interface only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cim_runtime.characterize.cells import CellSelection
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError

SCHEMES = ("identical", "rising-amplitude", "rising-width")


@dataclass(frozen=True)
class PulseTrainSettings:
    """A potentiation train followed by a depression train, repeated for several cycles."""

    #: Pulses per train.
    pulses: int = 64
    #: Potentiation-depression cycles.
    cycles: int = 3
    #: ``identical``, ``rising-amplitude`` or ``rising-width`` (non-identical schemes).
    scheme: str = "identical"
    #: Amplitude magnitude of the first pulse of a train, in volts.
    amplitude_v: float = 1.0
    #: Width of the first pulse of a train, in seconds.
    width_s: float = 100e-6
    #: Amplitude increase per pulse for ``rising-amplitude``, in volts.
    amplitude_step_v: float = 0.01
    #: Width increase per pulse for ``rising-width``, relative to ``width_s``.
    width_step_rel: float = 0.02

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme {self.scheme!r} is invalid: use one of {', '.join(SCHEMES)}")
        if self.pulses < 1 or self.cycles < 1:
            raise ConfigError(f"pulses={self.pulses} and cycles={self.cycles} must both be at least 1")

    def schedule(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the amplitude magnitudes (V) and widths (s) of the pulses of one train."""
        step = np.arange(self.pulses)
        amplitude = np.full(self.pulses, self.amplitude_v)
        width = np.full(self.pulses, self.width_s)
        if self.scheme == "rising-amplitude":
            amplitude = amplitude + self.amplitude_step_v * step
        elif self.scheme == "rising-width":
            width = width * (1.0 + self.width_step_rel * step)
        return amplitude, width


@dataclass
class PulseTrainResult:
    """Conductance before and after every pulse: shape (cycles, 2 directions, pulses + 1, cells)."""

    settings: PulseTrainSettings
    conductance_s: np.ndarray

    def rows(self):
        """Yield CSV rows: cycle, direction, pulse, cell, conductance_s (pulse 0 is the read before the train)."""
        cycles, _, pulses, cells = self.conductance_s.shape
        for cycle in range(cycles):
            for direction_index, direction in enumerate(("potentiation", "depression")):
                for pulse in range(pulses):
                    for cell in range(cells):
                        yield cycle, direction, pulse, cell, float(self.conductance_s[cycle, direction_index, pulse, cell])


def run_train(driver: ArrayDriver, cells: CellSelection, sign: int, amplitude: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Read, then pulse and read once per amplitude; returns conductances of shape (pulses + 1, cells)."""
    trace = [driver.read(cells.rows, cells.cols, array=cells.array)]
    for pulse_amplitude, pulse_width in zip(amplitude, width):
        driver.pulse(cells.rows, cells.cols, sign * pulse_amplitude, pulse_width, array=cells.array)
        trace.append(driver.read(cells.rows, cells.cols, array=cells.array))
    return np.stack(trace)


def pulse_train(driver: ArrayDriver, cells: CellSelection, settings: PulseTrainSettings = PulseTrainSettings(),
                *, progress: bool = True) -> PulseTrainResult:
    """Measure potentiation and depression trains; the cells are first depressed to the bottom."""
    amplitude, width = settings.schedule()
    nominal = np.full(2 * settings.pulses, settings.amplitude_v)
    run_train(driver, cells, -1, nominal, np.full(nominal.size, settings.width_s))
    traces = np.empty((settings.cycles, 2, settings.pulses + 1, len(cells)))
    for cycle in tqdm(range(settings.cycles), desc="pulse trains", unit="cycle", disable=not progress):
        traces[cycle, 0] = run_train(driver, cells, +1, amplitude, width)
        traces[cycle, 1] = run_train(driver, cells, -1, amplitude, width)
    return PulseTrainResult(settings, traces)


@dataclass(frozen=True)
class RampSettings:
    """Settings of a ramp pulse series: one pulse per step of linearly rising amplitude, a read after each."""

    start_v: float = 0.1
    stop_v: float = 2.0
    step_v: float = 0.05
    width_s: float = 100e-6
    #: Reads before the ramp, to estimate read noise for the threshold test.
    baseline_reads: int = 8
    #: Mean change, in read-noise sigmas, that marks the switching threshold.
    threshold_sigmas: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.start_v < self.stop_v or self.step_v <= 0:
            raise ConfigError(f"ramp {self.start_v}..{self.stop_v} V in steps of {self.step_v} V is invalid: need 0 < start < stop and step > 0")
        if self.baseline_reads < 2:
            raise ConfigError(f"baseline_reads={self.baseline_reads} is invalid: must be at least 2")

    def amplitudes_v(self) -> np.ndarray:
        return np.round(np.arange(self.start_v, self.stop_v + self.step_v / 2, self.step_v), 9)


@dataclass
class RampResult:
    """Conductance after each ramp pulse, per polarity: shape (steps, cells), with the thresholds found."""

    amplitudes_v: np.ndarray
    set_conductance_s: np.ndarray
    reset_conductance_s: np.ndarray
    #: Smallest amplitude whose pulse moved the mean conductance beyond the noise, in volts (NaN if none).
    set_threshold_v: float
    reset_threshold_v: float


def _threshold(amplitudes_v: np.ndarray, before_s: np.ndarray, trace_s: np.ndarray, noise_s: float, sigmas: float) -> float:
    previous = np.vstack([before_s[None, :], trace_s[:-1]])
    mean_change = np.abs((trace_s - previous).mean(axis=1))
    cells = trace_s.shape[1]
    # Two noisy reads differ by sqrt(2) read sigmas per cell; the mean over cells shrinks that by sqrt(cells).
    moved = np.flatnonzero(mean_change > sigmas * noise_s * np.sqrt(2.0 / cells))
    return float(amplitudes_v[moved[0]]) if moved.size else float("nan")


def ramp_pulse_series(driver: ArrayDriver, cells: CellSelection, settings: RampSettings = RampSettings()) -> RampResult:
    """Ramp positive pulses from the bottom of the window, then negative ones from where they end."""
    info = driver.info()
    amplitudes = settings.amplitudes_v()
    if amplitudes[-1] > info.pulse_amplitude_max_v:
        raise ConfigError(f"ramp stop {amplitudes[-1]:g} V exceeds the backend limit of {info.pulse_amplitude_max_v:g} V")

    def ramp(sign: int) -> tuple[np.ndarray, np.ndarray, float]:
        # Read noise is often relative to conductance, so estimate it where this ramp starts.
        baseline = np.stack([driver.read(cells.rows, cells.cols, array=cells.array) for _ in range(settings.baseline_reads)])
        trace = run_train(driver, cells, sign, amplitudes, np.full(amplitudes.size, settings.width_s))[1:]
        return baseline.mean(axis=0), trace, float(baseline.std(axis=0, ddof=1).mean())

    set_before, set_trace, set_noise = ramp(+1)
    reset_before, reset_trace, reset_noise = ramp(-1)
    return RampResult(
        amplitudes,
        set_trace,
        reset_trace,
        _threshold(amplitudes, set_before, set_trace, set_noise, settings.threshold_sigmas),
        _threshold(amplitudes, reset_before, reset_trace, reset_noise, settings.threshold_sigmas),
    )
