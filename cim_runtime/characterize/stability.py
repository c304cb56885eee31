"""Retention, endurance and read-noise measurements, through the driver interface only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from cim_runtime.characterize.cells import CellSelection
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError


def _pulses(driver: ArrayDriver, cells: CellSelection, amplitude_v: float, width_s: float, count: int) -> None:
    for _ in range(count):
        driver.pulse(cells.rows, cells.cols, amplitude_v, width_s, array=cells.array)


def _read(driver: ArrayDriver, cells: CellSelection) -> np.ndarray:
    return driver.read(cells.rows, cells.cols, array=cells.array)


@dataclass
class RetentionResult:
    """Reads at each time after programming: ``conductance_s`` has shape (times, cells)."""

    times_s: np.ndarray
    conductance_s: np.ndarray

    def relative_change(self) -> np.ndarray:
        """Mean conductance change since the first read, relative to it, per time."""
        first = self.conductance_s[0]
        return ((self.conductance_s - first) / first).mean(axis=1)


def retention(driver: ArrayDriver, cells: CellSelection, times_s=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5),
              *, set_pulses: int = 32, amplitude_v: float = 1.0, width_s: float = 100e-6) -> RetentionResult:
    """Potentiate the cells by ``set_pulses`` pulses, then read them at increasing times.

    On hardware :meth:`ArrayDriver.wait_s` sleeps, so long times take that long; the simulator
    advances its virtual clock instead.
    """
    times = np.asarray(times_s, dtype=np.float64)
    if times.size == 0 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise ConfigError(f"retention times {list(times)} are invalid: give increasing times of at least 0 s")
    _pulses(driver, cells, amplitude_v, width_s, set_pulses)
    reads, elapsed = [], 0.0
    for moment in times:
        driver.wait_s(moment - elapsed)
        elapsed = moment
        reads.append(_read(driver, cells))
    return RetentionResult(times, np.stack(reads))


@dataclass
class EnduranceResult:
    """High and low state after set and reset at the sampled cycles: shapes (samples, cells)."""

    cycles: np.ndarray
    high_s: np.ndarray
    low_s: np.ndarray

    def window_ratio(self) -> np.ndarray:
        """Mean high-to-low conductance ratio per sampled cycle."""
        return (self.high_s / self.low_s).mean(axis=1)


def endurance(driver: ArrayDriver, cells: CellSelection, cycles: int = 1000, *, read_every: int = 50,
              pulses_per_switch: int = 4, amplitude_v: float = 2.0, width_s: float = 1e-3, progress: bool = True) -> EnduranceResult:
    """Switch the cells fully up and down ``cycles`` times, reading both states every ``read_every`` cycles."""
    if cycles < 1 or read_every < 1 or pulses_per_switch < 1:
        raise ConfigError(f"cycles={cycles}, read_every={read_every} and pulses_per_switch={pulses_per_switch} must be at least 1")
    sampled, high, low = [], [], []
    for cycle in tqdm(range(1, cycles + 1), desc="endurance", unit="cycle", disable=not progress):
        _pulses(driver, cells, amplitude_v, width_s, pulses_per_switch)
        if cycle % read_every == 0 or cycle == 1:
            high.append(_read(driver, cells))
        _pulses(driver, cells, -amplitude_v, width_s, pulses_per_switch)
        if cycle % read_every == 0 or cycle == 1:
            low.append(_read(driver, cells))
            sampled.append(cycle)
    return EnduranceResult(np.asarray(sampled), np.stack(high), np.stack(low))


@dataclass
class ReadNoiseResult:
    """Repeated reads of the same cells at several programmed levels: shape (levels, reads, cells)."""

    conductance_s: np.ndarray

    def relative_sigma(self) -> float:
        """Mean over cells and levels of the read standard deviation relative to the mean read."""
        mean = self.conductance_s.mean(axis=1)
        sigma = self.conductance_s.std(axis=1, ddof=1)
        return float((sigma / mean).mean())


def read_noise(driver: ArrayDriver, cells: CellSelection, reads: int = 100, *, levels: int = 3,
               pulses_per_level: int = 16, amplitude_v: float = 1.0, width_s: float = 100e-6) -> ReadNoiseResult:
    """Read the cells ``reads`` times at each of ``levels`` states reached by potentiation steps."""
    if reads < 2 or levels < 1:
        raise ConfigError(f"reads={reads} and levels={levels} are invalid: need at least 2 reads and 1 level")
    samples = []
    for level in range(levels):
        if level:
            _pulses(driver, cells, amplitude_v, width_s, pulses_per_level)
        samples.append(np.stack([_read(driver, cells) for _ in range(reads)]))
    return ReadNoiseResult(np.stack(samples))
