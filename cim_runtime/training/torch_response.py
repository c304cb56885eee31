"""The simulator's pulse-response curves on torch tensors, for pulse updates inside a training step.

Each class mirrors one curve of :mod:`cim_runtime.device.response` (the numpy model that the simulator
uses) formula for formula, in normalized conductance ``x`` in [0, 1], so that training and programming
see the same device. ``tests/test_training_device.py`` checks that both agree. Besides ``up`` and
``down``, every curve here has ``position``: the nominal-pulse coordinate of ``x`` along the curve of
one direction, which the non-identical pulse scheme needs to size each pulse.
"""

from __future__ import annotations

import math

import torch

from cim_runtime.device.config import ResponseConfig
from cim_runtime.device.response import LINEAR_NU
from cim_runtime.errors import ConfigError


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Interpolate piecewise-linearly as ``numpy.interp`` does (clamped at both ends); ``xp`` increases."""
    clamped = x.clamp(float(xp[0]), float(xp[-1]))
    right = torch.searchsorted(xp, clamped, right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[right - 1], xp[right]
    y0, y1 = fp[right - 1], fp[right]
    fraction = ((clamped - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + fraction * (y1 - y0)


def exponential_shape(u: torch.Tensor, nu: float) -> torch.Tensor:
    """Return ``(1 - exp(-nu u)) / (1 - exp(-nu))``; ``u`` itself where ``nu`` is about 0."""
    if abs(nu) < LINEAR_NU:
        return u
    return torch.expm1(-nu * u) / math.expm1(-nu)


def inverse_exponential_shape(x: torch.Tensor, nu: float) -> torch.Tensor:
    """Invert :func:`exponential_shape` for ``x`` in [0, 1]."""
    x = x.clamp(0.0, 1.0)
    if abs(nu) < LINEAR_NU:
        return x
    # For large positive nu the shape reaches 1 within rounding; keep log1p's argument above -1.
    argument = torch.clamp(x * math.expm1(-nu), min=-1.0 + 1e-15)
    return (-torch.log1p(argument) / nu).clamp(0.0, 1.0)


class TorchTableResponse:
    """Measured curves, one normalized conductance after each pulse, interpolated."""

    def __init__(self, potentiation: torch.Tensor, depression: torch.Tensor):
        self._up = self._increasing(potentiation)
        self._down_reversed = self._increasing(depression.flip(0))
        self._up_index = torch.arange(self._up.numel(), dtype=self._up.dtype)
        self._down_index = torch.arange(self._down_reversed.numel(), dtype=self._up.dtype)

    @staticmethod
    def _increasing(values: torch.Tensor) -> torch.Tensor:
        running_max = torch.cummax(values, dim=0).values
        return running_max + torch.arange(values.numel(), dtype=values.dtype) * 1e-12

    def up(self, x: torch.Tensor, pulses: torch.Tensor) -> torch.Tensor:
        start = interpolate(x, self._up, self._up_index)
        moved = torch.maximum(x, interpolate(start + pulses, self._up_index, self._up))
        return torch.where(pulses > 0, moved, x)

    def down(self, x: torch.Tensor, pulses: torch.Tensor) -> torch.Tensor:
        start = interpolate(x, self._down_reversed, self._down_index)
        moved = torch.minimum(x, interpolate(start - pulses, self._down_index, self._down_reversed))
        return torch.where(pulses > 0, moved, x)

    def position(self, x: torch.Tensor, rising: bool) -> torch.Tensor:
        if rising:
            return interpolate(x, self._up, self._up_index)
        # Count depression pulses from the top of the depression curve.
        last = float(self._down_index[-1])
        return last - interpolate(x, self._down_reversed, self._down_index)

    def pulses_across(self) -> tuple[float, float]:
        return float(self._up.numel() - 1), float(self._down_reversed.numel() - 1)

    def reachable(self) -> tuple[float, float]:
        low = max(float(self._up[0]), float(self._down_reversed[0]))
        high = min(float(self._up[-1]), float(self._down_reversed[-1]))
        return low, high


class TorchExponentialResponse:
    """The exponential form, one scalar nonlinearity factor per direction."""

    def __init__(self, nu_up: float, nu_down: float, pulses_up: float, pulses_down: float,
                 span_up: tuple[float, float] = (0.0, 1.0), span_down: tuple[float, float] = (1.0, 0.0)):
        self.nu_up, self.nu_down = float(nu_up), float(nu_down)
        self.pulses_up, self.pulses_down = float(pulses_up), float(pulses_down)
        self.span_up, self.span_down = tuple(map(float, span_up)), tuple(map(float, span_down))

    @staticmethod
    def _advance(x, pulses, nu, count, span):
        start, end = span
        relative = (x - start) / (end - start)
        position = inverse_exponential_shape(relative, nu)
        moved = start + (end - start) * exponential_shape((position + pulses / count).clamp(0.0, 1.0), nu)
        # A cell short of the curve's start keeps its offset and takes the curve's first steps.
        before_start = x + (end - start) * exponential_shape((pulses / count).clamp(0.0, 1.0), nu)
        moved = torch.where(relative < 0, before_start, moved)
        return torch.where(pulses > 0, moved, x)

    def up(self, x, pulses):
        return torch.maximum(x, self._advance(x, pulses, self.nu_up, self.pulses_up, self.span_up))

    def down(self, x, pulses):
        return torch.minimum(x, self._advance(x, pulses, self.nu_down, self.pulses_down, self.span_down))

    def position(self, x: torch.Tensor, rising: bool) -> torch.Tensor:
        nu, count, (start, end) = ((self.nu_up, self.pulses_up, self.span_up) if rising
                                   else (self.nu_down, self.pulses_down, self.span_down))
        return inverse_exponential_shape((x - start) / (end - start), nu) * count

    def pulses_across(self) -> tuple[float, float]:
        return self.pulses_up, self.pulses_down

    def reachable(self) -> tuple[float, float]:
        low = max(min(self.span_up), min(self.span_down))
        high = min(max(self.span_up), max(self.span_down))
        return low, high


class TorchSoftBoundsResponse:
    """Steps proportional to the distance from the bound they approach."""

    def __init__(self, alpha_up: float, alpha_down: float):
        self.alpha_up, self.alpha_down = float(alpha_up), float(alpha_down)

    def up(self, x, pulses):
        return 1.0 - (1.0 - x) * (1.0 - self.alpha_up) ** pulses

    def down(self, x, pulses):
        return x * (1.0 - self.alpha_down) ** pulses

    def position(self, x: torch.Tensor, rising: bool) -> torch.Tensor:
        # Pulses count from the bottom (up) or the top (down). A soft bound is reached only after
        # infinitely many pulses, so positions next to a bound are capped at 1e-12 from it.
        if rising:
            return torch.log((1.0 - x).clamp(min=1e-12)) / math.log(1.0 - self.alpha_up)
        return torch.log(x.clamp(min=1e-12)) / math.log(1.0 - self.alpha_down)

    def pulses_across(self) -> tuple[float, float]:
        # Pulses that cover 95 % of the window from either bound.
        return math.log(0.05) / math.log(1.0 - self.alpha_up), math.log(0.05) / math.log(1.0 - self.alpha_down)

    def reachable(self) -> tuple[float, float]:
        return 0.0, 1.0


TorchCurve = TorchTableResponse | TorchExponentialResponse | TorchSoftBoundsResponse


def build_torch_curve(response: ResponseConfig, dtype: torch.dtype = torch.float64) -> TorchCurve:
    """Build the torch twin of ``response.build()``.

    Raises:
        ConfigError: the response kind has no torch twin.
    """
    if response.kind == "table":
        return TorchTableResponse(torch.as_tensor(response.normalize(response.potentiation_s), dtype=dtype),
                                  torch.as_tensor(response.normalize(response.depression_s), dtype=dtype))
    if response.kind == "soft-bounds":
        return TorchSoftBoundsResponse(response.step_fraction_up, response.step_fraction_down)
    if response.kind == "linear-step":
        return TorchExponentialResponse(0.0, 0.0, response.pulses_up, response.pulses_down)
    if response.kind == "exponential":
        return TorchExponentialResponse(
            response.nonlinearity_up, response.nonlinearity_down, response.pulses_up, response.pulses_down,
            span_up=tuple(response.normalize(response.up_span_s)) if response.up_span_s else (0.0, 1.0),
            span_down=tuple(response.normalize(response.down_span_s)) if response.down_span_s else (1.0, 0.0),
        )
    raise ConfigError(f"response kind {response.kind!r} has no torch form for training")
