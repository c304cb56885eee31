"""Encode signed weights as differential conductance pairs and decode them back.

A weight ``w`` of a layer whose largest magnitude is ``w_max`` maps to the pair
``G+ = G_min + (G_max - G_min) * max(w, 0) / w_max`` and ``G- = G_min + (G_max - G_min) * max(-w, 0) / w_max``,
so ``w = (G+ - G-) * w_max / (G_max - G_min)``. One scale per layer keeps every cell of the layer in
the same window; a layer of zeros maps every cell to ``G_min``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cim_runtime.errors import ConfigError


@dataclass(frozen=True)
class ConductanceWindow:
    """The conductance range targets may use, in siemens."""

    conductance_min_s: float
    conductance_max_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.conductance_min_s < self.conductance_max_s:
            raise ConfigError(
                f"conductance window [{self.conductance_min_s:g}, {self.conductance_max_s:g}] S is invalid: "
                "the minimum must be at least 0 and below the maximum"
            )

    @property
    def width_s(self) -> float:
        return self.conductance_max_s - self.conductance_min_s


def weight_scale(matrices: np.ndarray, window: ConductanceWindow) -> float:
    """Return the weight per siemens of differential conductance for a layer."""
    largest = float(np.max(np.abs(matrices))) if matrices.size else 0.0
    if not np.isfinite(largest):
        raise ConfigError("the layer has non-finite weights and cannot be mapped")
    return (largest if largest > 0 else 1.0) / window.width_s


def encode_pair(matrices: np.ndarray, scale: float, window: ConductanceWindow) -> tuple[np.ndarray, np.ndarray]:
    """Return target conductances (G+, G-) in siemens for weights ``matrices``."""
    positive = window.conductance_min_s + np.maximum(matrices, 0.0) / scale
    negative = window.conductance_min_s + np.maximum(-matrices, 0.0) / scale
    return positive, negative


def decode_pair(positive_s: np.ndarray, negative_s: np.ndarray, scale: float) -> np.ndarray:
    """Return the weights that conductance pairs represent."""
    return (np.asarray(positive_s, dtype=np.float64) - np.asarray(negative_s, dtype=np.float64)) * scale
