"""Models of the converters at the edges of a crossbar: the row DAC and the column ADC.

Both converters are uniform quantizers over a fixed full-scale range. With ``bits`` bits and a range
of ``range`` (volts for the DAC, amperes for the ADC), the step is exactly ``range / 2**bits`` and
there are ``2**bits`` codes:

* signed: codes ``-2**(bits-1) .. 2**(bits-1) - 1``, values ``code * step``, so the converter covers
  ``[-range/2, range/2 - step]``;
* unsigned: codes ``0 .. 2**bits - 1``, covering ``[0, range - step]``.

A value is rounded to the nearest code. A value whose code falls outside the code range is clipped
to the nearest end and counted as saturated. ``bits=None`` turns a converter into an ideal one that
passes values through unchanged (and never saturates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cim_runtime.errors import ConfigError

MAX_BITS = 24


def check_bits(bits: int | None, what: str) -> None:
    """Raise :class:`ConfigError` unless ``bits`` is None or a whole number from 1 to 24."""
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"{what} bits={bits!r} is invalid: must be a whole number from 1 to {MAX_BITS}, or None for an ideal converter")


@dataclass(frozen=True)
class Quantizer:
    """A uniform quantizer with ``2**bits`` codes over ``range``; ideal when ``bits`` is None."""

    bits: int | None
    #: Full-scale range, in the converter's unit (volts for a DAC, amperes for an ADC).
    range: float
    signed: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits, "converter")
        if not self.range > 0:
            raise ConfigError(f"converter range {self.range!r} is invalid: must be above 0")

    @property
    def step(self) -> float:
        """Value of one code step: exactly ``range / 2**bits``; 0 for an ideal converter."""
        return 0.0 if self.bits is None else self.range / 2**self.bits

    @property
    def code_min(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def code_max(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def codes(self, values: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the integer codes (as floats) of ``values * scale`` and the number of saturated values.

        ``scale`` converts ``values`` to the converter's unit in the same pass as the rounding.
        """
        if self.bits is None:
            raise ConfigError("an ideal converter (bits=None) has no codes")
        # A float32 factor rounds as the compiled path does, which multiplies by the same tensor.
        raw = torch.round(values * torch.tensor(scale / self.step, dtype=values.dtype, device=values.device))
        # Counting takes several passes over the data, so it runs only when a value is out of range.
        low, high = torch.aminmax(raw)
        if float(low) >= self.code_min and float(high) <= self.code_max:
            return raw, raw.new_zeros((), dtype=torch.int64)
        saturated = torch.count_nonzero(raw < self.code_min) + torch.count_nonzero(raw > self.code_max)
        return raw.clamp_(self.code_min, self.code_max), saturated

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the quantized values and the number of saturated values (a 0-d tensor)."""
        if self.bits is None:
            return values, values.new_zeros((), dtype=torch.int64)
        codes, saturated = self.codes(values)
        return codes.mul_(self.step), saturated


@dataclass
class SaturationCounter:
    """Counts of conversions and of conversions clipped at either end of the range."""

    conversions: int = 0
    saturated: int = 0

    def add(self, conversions: int, saturated: torch.Tensor | int) -> None:
        self.conversions += int(conversions)
        self.saturated += int(saturated)

    @property
    def fraction(self) -> float:
        """Saturated conversions as a fraction of all conversions; 0 when nothing was converted."""
        return self.saturated / self.conversions if self.conversions else 0.0

    def reset(self) -> None:
        self.conversions = 0
        self.saturated = 0

    def to_dict(self) -> dict:
        return {"conversions": self.conversions, "saturated": self.saturated, "fraction": self.fraction}


def bit_planes(codes: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Split signed integer codes into ``bits`` planes of sign times one magnitude bit, least significant first.

    ``codes == sum(2**k * plane[k])``. Each plane contains only -1, 0 and 1, so a bit-serial DAC can
    drive it as one read of -V, 0 or +V per row.
    """
    magnitude = codes.abs().to(torch.int64)
    sign = torch.sign(codes)
    planes = []
    for bit in range(bits):
        plane = ((magnitude >> bit) & 1).to(codes.dtype)
        planes.append(plane.mul_(sign))
    return planes
