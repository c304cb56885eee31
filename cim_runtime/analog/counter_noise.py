"""Gaussian read noise from a counter-based generator, for the fused (compiled) ADC loop.

``torch.randn`` fills memory on one CPU thread, at about 200 million values per second on the 2-core
test machine. At that rate, drawing the read noise of every tile output of ResNet-18 took about as
long as all its convolutions. Here each noise value is a pure function of a per-call key and the
element's position, and ``torch.compile`` fuses its arithmetic into the loop that adds the noise and
digitizes, so the noise never goes to memory.

Two xorshift-multiply hashes, each with its own multiplier, give 64 random bits. Each hashes an
affine map of the position whose factors come from the per-call key. Their four 16-bit parts sum
to an Irwin-Hall variable (the sum of four uniform ones), which is already close to normal. An odd polynomial of degree 9 then maps it onto the normal
quantiles (``NORMALIZING_POLYNOMIAL``). This replaces the logarithm, square root and cosine of the
Box-Muller transform with a square, four multiply-adds and a multiply.
Measured against the normal, the distribution function is off by at most 0.0002, and the tail
fractions beyond 2, 3 and 4 sigma are within 3 % of the normal's. The largest value is 5.2 sigma,
so values beyond 4.5 sigma (7 in a million for the normal) come at 0.64 times the normal's rate,
and values beyond 5 sigma at 0.02 times. ``tests/test_counter_noise.py`` checks the distribution
function, the tails and the largest value from the exact distribution, and moments and
correlations (of neighbours, of random keys and of keys that differ by a small XOR) from samples.

The result depends only on the key and the tensor shape, not on the thread count or the timing.
"""

from __future__ import annotations

import math

import torch

#: Positions must fit in a non-negative int32; larger draws fall back to ``torch.randn``.
MAX_ELEMENTS = 1 << 31

_MULTIPLIERS = (0x45D9F3B, 0x2C1B3C6D)
_LOW16 = 0xFFFF

#: Parts summed, and the number of values each part takes.
PARTS = 4
PART_LEVELS = 1 << 16
_SUM_MEAN = PARTS * (PART_LEVELS - 1) / 2
_SUM_SCALE = 1.0 / math.sqrt(PARTS * (PART_LEVELS**2 - 1) / 12)

#: Coefficients of t, t**3, ..., t**9 that map the standardized sum t onto a standard normal value.
#: They are the least-squares fit of the normal quantile of the sum's distribution function,
#: weighted by its density (``fit_normalizing_polynomial`` repeats the fit).
NORMALIZING_POLYNOMIAL = (9.62347645e-01, 9.27037225e-03, 1.79196756e-03, -3.61860685e-04, 3.80467883e-05)


def _mix32(values: torch.Tensor, multiplier: int) -> torch.Tensor:
    """Scramble int32 values with two xorshift-multiply rounds and a final xorshift.

    Products wrap modulo 2**32 (the vector multiply instructions do so). Right shifts are masked,
    so they act as logical shifts on negative values too.
    """
    # NOTE: signed int32 overflow is undefined in C++; the tests check that eager and compiled code agree.
    values = (values ^ ((values >> 16) & _LOW16)) * multiplier
    values = (values ^ ((values >> 16) & _LOW16)) * multiplier
    return values ^ ((values >> 16) & _LOW16)


def draw_key(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Return two random keys (int32, on ``device``) for one draw, taken from ``generator``."""
    source = generator.device if generator is not None else device
    key = torch.randint(-(1 << 31), 1 << 31, (2,), generator=generator, dtype=torch.int64, device=source)
    return key.to(device=device, dtype=torch.int32)


def counter_normal(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Return standard normal values shaped like ``like`` (float32), a function of ``key`` and position only."""
    position = torch.arange(like.numel(), dtype=torch.int32, device=like.device).view(like.shape)
    # NOTE: torch.compile's lowering evaluates an expression once for each operation that uses it, so
    # the hashes are not chained and t is squared with torch.square. Chained, the loop took three
    # times as long to compile.

    # Each hash reads the position through an affine map set by the keys. Keyed by a plain XOR, two
    # draws whose keys differ by some d would give the same numbers at positions p and p ^ d.
    first = _mix32(position * (key[0] | 1) + key[1], _MULTIPLIERS[0])
    second = _mix32(position * (key[1] | 1) + key[0], _MULTIPLIERS[1])
    total = (first & _LOW16) + ((first >> 16) & _LOW16) + (second & _LOW16) + ((second >> 16) & _LOW16)
    # The sum is below 2**18, so float32 represents it exactly.
    t = (total.float() - _SUM_MEAN) * _SUM_SCALE
    square = torch.square(t)
    result = NORMALIZING_POLYNOMIAL[-1]
    for coefficient in reversed(NORMALIZING_POLYNOMIAL[:-1]):
        result = coefficient + square * result
    return t * result


def sum_distribution(points: int = 40001) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the standardized sum t on a grid, with its distribution function and density in t (float64).

    The sum of the parts is taken as continuous: with 65,536 levels per part, the steps are 1.3e-5 sigma.
    """
    x = torch.linspace(0, PARTS, points, dtype=torch.float64)
    cdf = torch.zeros_like(x)
    density = torch.zeros_like(x)
    for k in range(PARTS + 1):
        excess = (x - k).clamp(min=0)
        cdf += (-1) ** k * math.comb(PARTS, k) * excess**PARTS / math.factorial(PARTS)
        density += (-1) ** k * math.comb(PARTS, k) * excess ** (PARTS - 1) / math.factorial(PARTS - 1)
    spread = math.sqrt(PARTS / 12)
    return (x - PARTS / 2) / spread, cdf, density * spread


def fit_normalizing_polynomial() -> torch.Tensor:
    """Fit the odd polynomial that maps the standardized sum onto normal quantiles (float64 coefficients)."""
    t, cdf, density = sum_distribution()
    inside = (cdf > 1e-12) & (cdf < 1 - 1e-12)
    t, cdf, weight = t[inside], cdf[inside], density[inside].sqrt()
    powers = torch.stack([t**d for d in range(1, 2 * len(NORMALIZING_POLYNOMIAL), 2)], dim=1)
    target = torch.special.ndtri(cdf)
    return torch.linalg.lstsq(powers * weight[:, None], (target * weight)[:, None]).solution.flatten()
