"""Pulse-response curves in normalized conductance ``x = (G - G_min) / (G_max - G_min)``.

A curve gives where a cell at ``x`` goes after ``n`` nominal pulses (``n`` may be fractional). Every
curve is vectorized over cells, keeps ``x`` inside ``[0, 1]`` and never moves a cell against the
direction of the pulse. Four forms are available:

* :class:`TableResponse`: measured conductance after each pulse, interpolated, so a cell may start
  anywhere on the curve.
* :class:`ExponentialResponse`: ``x(p) = (1 - exp(-nu * p / N)) / (1 - exp(-nu))`` for potentiation from
  the bottom after ``p`` pulses, mirrored for depression from the top. ``nu`` is the nonlinearity
  factor of that direction (0 is linear, positive saturates, negative accelerates) and ``N`` the
  number of pulses that crosses the window. ``nu = 0`` for both directions is the linear-step form.
* :class:`SoftBoundsResponse`: each pulse moves a fraction ``alpha`` of the remaining distance to the
  bound, ``x -> x + alpha * (1 - x)`` up and ``x -> x - alpha * x`` down.
"""

from __future__ import annotations

import abc

import numpy as np

#: Nonlinearity factors below this magnitude are treated as linear, to avoid 0/0.
LINEAR_NU = 1e-6


def exponential_shape(u: np.ndarray, nu) -> np.ndarray:
    """Return ``(1 - exp(-nu u)) / (1 - exp(-nu))`` for ``u`` in [0, 1]; ``u`` itself where nu is ~0."""
    nu = np.asarray(nu, dtype=np.float64)
    linear = np.abs(nu) < LINEAR_NU
    safe_nu = np.where(linear, 1.0, nu)
    curved = np.expm1(-safe_nu * u) / np.expm1(-safe_nu)
    return np.where(linear, u, curved)


def inverse_exponential_shape(x: np.ndarray, nu) -> np.ndarray:
    """Invert :func:`exponential_shape`: return the ``u`` in [0, 1] at which the shape equals ``x``."""
    nu = np.asarray(nu, dtype=np.float64)
    linear = np.abs(nu) < LINEAR_NU
    safe_nu = np.where(linear, 1.0, nu)
    x = np.clip(x, 0.0, 1.0)
    # For large positive nu the shape reaches 1 within rounding; keep log1p's argument above -1.
    curved = -np.log1p(np.maximum(x * np.expm1(-safe_nu), -1.0 + 1e-15)) / safe_nu
    return np.clip(np.where(linear, x, curved), 0.0, 1.0)


class ResponseCurve(abc.ABC):
    """Interface of a response curve: the move of cells after ``n`` nominal pulses, in normalized conductance."""

    @abc.abstractmethod
    def up(self, x: np.ndarray, pulses: np.ndarray) -> np.ndarray:
        """Return ``x`` after ``pulses`` potentiation pulses."""

    @abc.abstractmethod
    def down(self, x: np.ndarray, pulses: np.ndarray) -> np.ndarray:
        """Return ``x`` after ``pulses`` depression pulses."""

    def reachable(self) -> tuple[float, float]:
        """Return the normalized range that both directions reach, the window for programming targets."""
        return 0.0, 1.0


def increasing_curve(values: np.ndarray) -> np.ndarray:
    """Make a measured curve strictly increasing so that interpolation can invert it."""
    running_max = np.maximum.accumulate(values)
    return running_max + np.arange(values.size) * 1e-12


class TableResponse(ResponseCurve):
    """Measured curves, given in normalized conductance, one value after each pulse."""

    def __init__(self, potentiation: np.ndarray, depression: np.ndarray):
        self._up = increasing_curve(np.asarray(potentiation, dtype=np.float64))
        # The depression curve falls with pulse count; keep it reversed so that it rises with index.
        self._down_reversed = increasing_curve(np.asarray(depression, dtype=np.float64)[::-1])
        self._up_index = np.arange(self._up.size, dtype=np.float64)
        self._down_index = np.arange(self._down_reversed.size, dtype=np.float64)

    # A cell short of a measured curve's start lands on the curve after any pulse, because separately
    # measured sweeps need not meet. A cell past the curve's end stays there, and a pulse below
    # threshold (zero nominal pulses) never moves a cell.
    def up(self, x, pulses):
        start = np.interp(x, self._up, self._up_index)
        moved = np.maximum(x, np.interp(start + pulses, self._up_index, self._up))
        return np.where(pulses > 0, moved, x)

    def down(self, x, pulses):
        start = np.interp(x, self._down_reversed, self._down_index)
        moved = np.minimum(x, np.interp(start - pulses, self._down_index, self._down_reversed))
        return np.where(pulses > 0, moved, x)

    def reachable(self):
        low = max(self._up[0], self._down_reversed[0])
        high = min(self._up[-1], self._down_reversed[-1])
        return float(low), float(high)


class ExponentialResponse(ResponseCurve):
    """The exponential form with a nonlinearity factor, a pulse count and a span per direction.

    A direction's span is the normalized conductance where its curve starts and ends (``(0, 1)`` for
    potentiation and ``(1, 0)`` for depression unless measured otherwise). A cell short of the span's
    start keeps its offset and takes the curve's first steps. A cell past the span's end stays there. ``nu_up`` and ``nu_down`` may be per-cell arrays
    (device-to-device spread).
    """

    def __init__(self, nu_up, nu_down, pulses_up: float, pulses_down: float,
                 span_up: tuple[float, float] = (0.0, 1.0), span_down: tuple[float, float] = (1.0, 0.0)):
        self.nu_up = nu_up
        self.nu_down = nu_down
        self.pulses_up = float(pulses_up)
        self.pulses_down = float(pulses_down)
        self.span_up = tuple(map(float, span_up))
        self.span_down = tuple(map(float, span_down))

    @staticmethod
    def _pick(value, index):
        array = np.asarray(value)
        return array if array.ndim == 0 or index is None else array[index]

    @staticmethod
    def _advance(x, pulses, nu, count, span):
        start, end = span
        relative = (x - start) / (end - start)
        position = inverse_exponential_shape(relative, nu)
        moved = start + (end - start) * exponential_shape(np.clip(position + pulses / count, 0.0, 1.0), nu)
        # A cell short of the curve's start keeps its offset and takes the curve's first steps.
        before_start = x + (end - start) * exponential_shape(np.clip(pulses / count, 0.0, 1.0), nu)
        moved = np.where(relative < 0, before_start, moved)
        return np.where(pulses > 0, moved, x)

    def up(self, x, pulses, index=None):
        moved = self._advance(x, pulses, self._pick(self.nu_up, index), self.pulses_up, self.span_up)
        return np.maximum(x, moved)

    def down(self, x, pulses, index=None):
        moved = self._advance(x, pulses, self._pick(self.nu_down, index), self.pulses_down, self.span_down)
        return np.minimum(x, moved)

    def reachable(self):
        low = max(min(self.span_up), min(self.span_down))
        high = min(max(self.span_up), max(self.span_down))
        return float(low), float(high)


class SoftBoundsResponse(ResponseCurve):
    """Steps proportional to the distance from the bound they approach."""

    def __init__(self, alpha_up: float, alpha_down: float):
        self.alpha_up = float(alpha_up)
        self.alpha_down = float(alpha_down)

    def up(self, x, pulses):
        return 1.0 - (1.0 - x) * (1.0 - self.alpha_up) ** pulses

    def down(self, x, pulses):
        return x * (1.0 - self.alpha_down) ** pulses
