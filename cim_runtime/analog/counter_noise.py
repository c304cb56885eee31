"""Gaussian read noise from a counter-based generator, for the fused (compiled) ADC loop.

``torch.randn`` fills memory on one CPU thread, at about 200 million values per second on the 2-core
test machine. At that rate, drawing the read noise of every tile output of ResNet-18 took about as
long as all its convolutions. Here each noise value is a pure function of a per-call key and the
element's position. Two xorshift-multiply hashes of the position give 32 random bits, and the
Box-Muller transform turns them into one standard normal value: 24 bits set the radius and 8 bits
pick one of 256 equally spaced angles. The cosine takes the same moments over those 256 angles as
over the whole circle up to the 255th, so the discrete angle leaves no trace that a test can find
(``tests/test_counter_noise.py`` checks the distribution function to 0.001). ``torch.compile`` fuses
this arithmetic into the loop that adds the noise and digitizes, so the noise never goes to memory.

The result depends only on the key and the tensor shape, not on the thread count or the timing.
The radius has 24 bits, so no value lies further than about 5.9 sigma from zero.
"""

from __future__ import annotations

import math

import torch

#: Positions must fit in a non-negative int32; larger draws fall back to ``torch.randn``.
MAX_ELEMENTS = 1 << 31

_MULTIPLIER = 0x45D9F3B
_LOW16 = 0xFFFF
_LOW24 = 0xFFFFFF
_LOW8 = 0xFF
_UNIFORM_SCALE = 1.0 / (1 << 24)
_ANGLES = 256


def _mix32(values: torch.Tensor) -> torch.Tensor:
    """Scramble int32 values with two xorshift-multiply rounds and a final xorshift.

    Products wrap modulo 2**32 (the vector multiply instructions do so). Right shifts are masked,
    so they act as logical shifts on negative values too.
    """
    # NOTE: signed int32 overflow is undefined in C++; the tests check that eager and compiled code agree.
    values = (values ^ ((values >> 16) & _LOW16)) * _MULTIPLIER
    values = (values ^ ((values >> 16) & _LOW16)) * _MULTIPLIER
    return values ^ ((values >> 16) & _LOW16)


def draw_key(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Return two random keys (int32, on ``device``) for one draw, taken from ``generator``."""
    source = generator.device if generator is not None else device
    key = torch.randint(-(1 << 31), 1 << 31, (2,), generator=generator, dtype=torch.int64, device=source)
    return key.to(device=device, dtype=torch.int32)


def counter_normal(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Return standard normal values shaped like ``like`` (float32), a function of ``key`` and position only."""
    position = torch.arange(like.numel(), dtype=torch.int32, device=like.device).view(like.shape)
    bits = _mix32(_mix32(position ^ key[0]) ^ key[1])
    # In float32, (n + 0.5) / 2**24 lies in (0, 1]: above 0, so the logarithm is finite.
    radius = torch.sqrt(-2.0 * torch.log((((bits >> 8) & _LOW24).float() + 0.5) * _UNIFORM_SCALE))
    return radius * torch.cos(((bits & _LOW8).float() + 0.5) * (2 * math.pi / _ANGLES))
