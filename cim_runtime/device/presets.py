"""Measured pulse tables of p(CEA-co-DEGDVE) memristors, shipped as named presets.

Each preset is a pair of files with 64 conductance values, one after each of 64 consecutive
potentiation (or depression) pulses. The values are in siemens (1e-3 to 9e-3 S). Source: pulse tables
published with Kim et al., "An Ultrathin, Cyano-Functionalized Copolymeric Memristor by iCVD Process
for Driving Convolutional Neural Networks of High-Resolution Images", Advanced Science 2025,
doi:10.1002/advs.202511801. C1D1, C4D1 and C1D8 are CEA:DEGDVE compositions 1:1, 4:1 and 1:8;
Identical_spikes, Non_spikes_1 and Non_spikes_2 compare identical and two non-identical pulse schemes
on one device (Identical_spikes equals C4D1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from cim_runtime.errors import ConfigError, DataError

#: Names of the measured presets, in the order the study lists them.
MEASURED_PRESETS = ("C1D1", "C4D1", "C1D8", "Identical_spikes", "Non_spikes_1", "Non_spikes_2")


@dataclass(frozen=True)
class PulseTable:
    """Conductance after each potentiation and each depression pulse, in siemens."""

    name: str
    potentiation_s: np.ndarray
    depression_s: np.ndarray

    def __post_init__(self) -> None:
        for label, values in (("potentiation", self.potentiation_s), ("depression", self.depression_s)):
            if values.ndim != 1 or values.size < 2:
                raise DataError(f"pulse table {self.name!r}: {label} needs at least 2 values, got {values.size}")
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                raise DataError(f"pulse table {self.name!r}: {label} conductances must be finite and positive")


def parse_finite_number(text: str, path: Path, line: int) -> float:
    """Parse one field of a data file, naming the file and line when it is not a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: {text.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line}: {value} is not a finite value")
    return value


def read_conductance_column(path: Path) -> np.ndarray:
    """Parse a text file with one conductance in siemens per line; blank lines are skipped.

    Raises:
        DataError: the file is missing, empty or has a line that is not a finite number.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read pulse table {path}: {exc}") from exc
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        values.append(parse_finite_number(line, path, number))
    if not values:
        raise DataError(f"pulse table {path} contains no values")
    return np.asarray(values, dtype=np.float64)


def load_measured_preset(name: str) -> PulseTable:
    """Load one of :data:`MEASURED_PRESETS` from the files inside this package."""
    if name not in MEASURED_PRESETS:
        raise ConfigError(f"unknown device profile {name!r}: use one of {', '.join(MEASURED_PRESETS)} or 'ideal'")
    folder = resources.files("cim_runtime.device") / "presets"
    return PulseTable(
        name=name,
        potentiation_s=read_conductance_column(Path(str(folder / f"{name}_potentiation.txt"))),
        depression_s=read_conductance_column(Path(str(folder / f"{name}_depression.txt"))),
    )


def linear_table(conductance_min_s: float = 1e-3, conductance_max_s: float = 3e-3, levels: int = 64) -> PulseTable:
    """Build a perfectly linear, symmetric table, for tests and as an ideal reference."""
    ramp = np.linspace(conductance_min_s, conductance_max_s, levels)
    return PulseTable(name="ideal", potentiation_s=ramp, depression_s=ramp[::-1].copy())
