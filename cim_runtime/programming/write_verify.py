"""Bidirectional incremental-step write-verify, run in parallel over many cells through any driver.

Each round reads every unfinished cell. A cell inside its tolerance band is accepted. A cell below its
band gets a potentiation pulse, a cell above it a depression pulse. The amplitude starts at
``start_amplitude_v`` and grows by ``amplitude_step_v`` on each repeated pulse in the same direction, up
to ``max_amplitude_v``. A change of direction (an overshoot) restarts the ramp from a lower start. Each
reversal moves that cell's start amplitude a fraction ``1 - reversal_shrink`` of the way down to
``min_amplitude_v``. Cells on a steep stretch of their curve thus get ever finer pulses near the target.
A cell stops when it is accepted or when it has had ``max_pulses`` pulses; the loop also stops at
``max_time_s``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.device.config import DeviceConfig, PulseLaw
from cim_runtime.mapping import CellTargets
from cim_runtime.programming.schemes import SCHEMES, make_scheme

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteVerifyConfig:
    """Settings of :func:`write_verify`."""

    #: Half-width of the acceptance band as a fraction of the backend's conductance window.
    tolerance_rel: float = 0.01
    #: Half-width of the acceptance band in siemens; when set, it replaces ``tolerance_rel``.
    tolerance_s: float | None = None
    #: Amplitude magnitude of the first pulse in a direction, in volts.
    start_amplitude_v: float = 0.75
    #: Floor of the start amplitude, in volts; set it near the device's switching threshold.
    min_amplitude_v: float = 0.5
    #: Factor applied to (start amplitude - floor) at each change of direction, 0 to 1.
    reversal_shrink: float = 0.5
    #: Amplitude increase per repeated pulse in the same direction, in volts.
    amplitude_step_v: float = 0.05
    #: Largest amplitude magnitude the ramp reaches, in volts.
    max_amplitude_v: float = 2.0
    #: Width of every pulse, in seconds.
    width_s: float = 100e-6
    #: Pulse budget per cell.
    max_pulses: int = 100
    #: Budget of summed pulse widths per cell, in seconds; no budget if None.
    max_cell_time_s: float | None = None
    #: Reads averaged into each verify value, after ``discard_reads`` warm-up reads that are thrown away.
    reads_per_verify: int = 1
    discard_reads: int = 0
    #: Extra verify rounds a cell must read inside its band before it is accepted.
    confirm_reads: int = 0
    #: Wall-clock budget of the whole run, in seconds.
    max_time_s: float = 3600.0
    #: Voltage of every verify read, in volts; the backend default if None.
    read_voltage_v: float | None = None
    #: Pulse scheme: ``fixed``, ``amplitude-ramp``, ``width-ramp`` or ``adaptive`` (see schemes.py).
    scheme: str = "amplitude-ramp"
    #: Width-ramp scheme: width growth factor per repeated pulse, above 1.
    width_ramp_factor: float = 1.5
    #: Width-ramp scheme: longest pulse, in seconds.
    max_width_s: float = 1e-3
    #: Adaptive scheme: fraction of the remaining error each pulse aims to remove, 0 to 1.
    adaptive_aim: float = 0.8
    #: Adaptive scheme: expected levels across the window, for the first step estimate.
    adaptive_levels: float = 64.0
    #: Adaptive scheme: factor applied to a cell's aim at each overshoot, 0 to 1.
    adaptive_reversal_shrink: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.tolerance_rel < 0.5:
            raise ConfigError(f"tolerance_rel={self.tolerance_rel} is invalid: must be above 0 and below 0.5")
        if not 0 < self.start_amplitude_v <= self.max_amplitude_v:
            raise ConfigError(
                f"start_amplitude_v={self.start_amplitude_v} is invalid: must be above 0 and at most max_amplitude_v={self.max_amplitude_v}"
            )
        if not 0 < self.min_amplitude_v <= self.start_amplitude_v:
            raise ConfigError(
                f"min_amplitude_v={self.min_amplitude_v} is invalid: must be above 0 and at most start_amplitude_v={self.start_amplitude_v}"
            )
        if not 0 <= self.reversal_shrink <= 1:
            raise ConfigError(f"reversal_shrink={self.reversal_shrink} is invalid: must be between 0 and 1 inclusive")
        if self.amplitude_step_v < 0:
            raise ConfigError(f"amplitude_step_v={self.amplitude_step_v} is invalid: must be at least 0")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme={self.scheme!r} is invalid: use one of {', '.join(SCHEMES)}")
        if not self.width_ramp_factor > 1 or not self.width_s <= self.max_width_s:
            raise ConfigError(f"width_ramp_factor={self.width_ramp_factor} must be above 1 and max_width_s={self.max_width_s} "
                              f"at least width_s={self.width_s}")
        if not 0 < self.adaptive_reversal_shrink <= 1:
            raise ConfigError(f"adaptive_reversal_shrink={self.adaptive_reversal_shrink} is invalid: must be above 0 and at most 1")
        if not 0 < self.adaptive_aim <= 1 or not self.adaptive_levels >= 1:
            raise ConfigError(f"adaptive_aim={self.adaptive_aim} must be in (0, 1] and adaptive_levels={self.adaptive_levels} at least 1")
        if self.tolerance_s is not None and not self.tolerance_s > 0:
            raise ConfigError(f"tolerance_s={self.tolerance_s} is invalid: must be above 0 siemens")
        if self.reads_per_verify < 1 or self.discard_reads < 0 or self.confirm_reads < 0:
            raise ConfigError(f"reads_per_verify={self.reads_per_verify} must be at least 1, and discard_reads={self.discard_reads} "
                              f"and confirm_reads={self.confirm_reads} at least 0")
        if self.max_cell_time_s is not None and not self.max_cell_time_s > 0:
            raise ConfigError(f"max_cell_time_s={self.max_cell_time_s} is invalid: must be above 0 seconds")
        if self.max_pulses < 0 or self.max_time_s <= 0:
            raise ConfigError(f"max_pulses={self.max_pulses} and max_time_s={self.max_time_s} must be at least 0 and above 0")


@dataclass
class WriteVerifyResult:
    """Outcome of a write-verify run, per cell and in summary."""

    targets: CellTargets
    #: Last verify read of every cell, in siemens.
    measured_s: np.ndarray
    #: Pulses applied to every cell.
    pulses: np.ndarray
    #: True where the last read was inside the tolerance band.
    in_tolerance: np.ndarray
    tolerance_s: float
    elapsed_s: float
    rounds: int

    def summary(self) -> dict:
        """Figures a report needs: pulses per cell, fraction in tolerance, failures, time."""
        cells = len(self.targets)
        return {
            "cells": cells,
            "tolerance_s": self.tolerance_s,
            "pulses_total": int(self.pulses.sum()),
            "pulses_per_cell_mean": float(self.pulses.mean()) if cells else 0.0,
            "pulses_per_cell_p99": float(np.percentile(self.pulses, 99)) if cells else 0.0,
            "fraction_in_tolerance": float(self.in_tolerance.mean()) if cells else 1.0,
            "failed_cells": int(cells - self.in_tolerance.sum()),
            "rounds": self.rounds,
            "time_s": self.elapsed_s,
        }


def _check_amplitudes(driver: ArrayDriver, config: WriteVerifyConfig) -> None:
    """Reject a ramp that would exceed the backend's limits before any pulse is sent."""
    info = driver.info()
    if config.max_amplitude_v > info.pulse_amplitude_max_v:
        raise ConfigError(
            f"max_amplitude_v={config.max_amplitude_v} exceeds the backend limit of {info.pulse_amplitude_max_v} V ({info.identity})"
        )
    widths = (config.width_s, config.max_width_s) if config.scheme == "width-ramp" else (config.width_s,)
    for width in widths:
        if not info.pulse_width_min_s <= width <= info.pulse_width_max_s:
            raise ConfigError(f"pulse width {width:g} s is outside the backend range {info.pulse_width_min_s:g}..{info.pulse_width_max_s:g} s")


def tolerance_for(config: WriteVerifyConfig, window_s: float) -> float:
    """Band half-width in siemens: ``tolerance_s`` if set, else ``tolerance_rel`` of the window."""
    return config.tolerance_s if config.tolerance_s is not None else config.tolerance_rel * window_s


def verify_read(driver: ArrayDriver, targets: CellTargets, cells: np.ndarray, config: WriteVerifyConfig) -> np.ndarray:
    """Read ``cells``, drop the warm-up reads and average the rest."""
    total = np.zeros(cells.size)
    for repeat in range(config.discard_reads + config.reads_per_verify):
        values = driver.read(targets.row[cells], targets.col[cells], array=targets.array[cells], read_voltage_v=config.read_voltage_v)
        if repeat >= config.discard_reads:
            total += values
    return total / config.reads_per_verify


def write_verify(
    driver: ArrayDriver, targets: CellTargets, config: WriteVerifyConfig = WriteVerifyConfig(), *, progress: bool = True,
    law: PulseLaw | None = None, device: DeviceConfig | None = None,
) -> WriteVerifyResult:
    """Program every cell of ``targets`` to its target conductance.

    Cells that end outside their band are reported in the result, not raised; callers that need
    every cell in tolerance check :attr:`WriteVerifyResult.in_tolerance`.

    Args:
        law: the pulse law the adaptive scheme inverts; the default law of the presets if omitted.
        device: a device model for the adaptive scheme to predict steps from; the backend's own
            (:meth:`~cim_runtime.driver.ArrayDriver.device_model`) if omitted. It replaces ``law``.
    """
    _check_amplitudes(driver, config)
    info = driver.info()
    tolerance_s = tolerance_for(config, info.window_s)
    count = len(targets)
    measured = np.full(count, np.nan)
    pulses = np.zeros(count, dtype=np.int32)
    # Per-cell pulse time and confirmations cost memory only when their settings are in use.
    pulse_time_s = np.zeros(count) if config.max_cell_time_s is not None else None
    confirm_left = None
    if config.confirm_reads:
        confirm_left = np.full(count, config.confirm_reads, dtype=np.int32)
    if device is None and law is None:
        device = driver.device_model()
    scheme = make_scheme(config, count, info.window_s, law, info.pulse_width_min_s, device)
    active = np.arange(count)
    started = time.monotonic()
    rounds = 0

    with tqdm(total=count, desc="write-verify", unit="cell", disable=not progress) as bar:
        while active.size:
            rounds += 1
            measured[active] = verify_read(driver, targets, active, config)
            error = measured[active] - targets.target_s[active]
            in_band = np.abs(error) <= tolerance_s
            accepted = in_band
            if confirm_left is not None:
                confirm_left[active[~in_band]] = config.confirm_reads
                accepted = in_band & (confirm_left[active] == 0)
                confirm_left[active[in_band & ~accepted]] -= 1
            within_budget = pulses[active] < config.max_pulses
            if pulse_time_s is not None:
                within_budget &= pulse_time_s[active] < config.max_cell_time_s
            needs_pulse = ~in_band & within_budget
            out_of_time = time.monotonic() - started > config.max_time_s
            next_active = active[needs_pulse | (in_band & ~accepted)] if not out_of_time else active[:0]
            bar.update(active.size - next_active.size)
            if out_of_time and needs_pulse.any():
                logger.warning("write-verify stopped at its time budget of %g s with %d cells unfinished", config.max_time_s, needs_pulse.sum())
            pulsed = active[needs_pulse]
            active = next_active
            if not active.size or not pulsed.size:
                continue

            target_direction = np.where(error[needs_pulse] < 0, 1, -1).astype(np.int8)
            amplitude, width = scheme.choose(pulsed, target_direction, error[needs_pulse], measured[pulsed])
            driver.pulse(targets.row[pulsed], targets.col[pulsed], target_direction * amplitude, width, array=targets.array[pulsed])
            pulses[pulsed] += 1
            if pulse_time_s is not None:
                pulse_time_s[pulsed] += width

    in_tolerance = np.abs(measured - targets.target_s) <= tolerance_s
    result = WriteVerifyResult(targets, measured, pulses, in_tolerance, tolerance_s, time.monotonic() - started, rounds)
    logger.info("write-verify done: %s", result.summary())
    return result


def config_from_dict(raw: dict) -> WriteVerifyConfig:
    """Build a config from a mapping, rejecting unknown keys."""
    known = set(asdict(WriteVerifyConfig()))
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown write-verify setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
    return WriteVerifyConfig(**raw)
