"""The analog chain's elementwise stages as ``torch.compile`` loops (``AnalogConfig.compile``).

Two loops run per layer: the DAC (quantize, gather each block set's channels, square) and the ADC
(read noise, rounding, saturation count and tile sum over each block set, then pair subtraction and
scaling to layer units). Each replaces several passes over memory with one.
"""

from __future__ import annotations

import logging

import torch

from cim_runtime.analog.counter_noise import counter_normal

_compiled: dict[str, object] = {}

#: Variants of each compiled loop that torch may keep (its default is 8).
RECOMPILE_LIMIT = 64

#: Inductor settings for the ADC loop. By default inductor writes a long elementwise expression
#: that reads many inputs (here the noisy currents) to memory before a reduction reads it back.
#: These limits keep the noise inside the tile-sum loop, which then reads each current once: 1.2
#: to 1.9 times faster on ResNet-18 layer shapes in one-off timings.
INLINE_NOISE = {"realize_opcount_threshold": 1000, "realize_reads_threshold": 100, "realize_acc_reads_threshold": 100}


def compiled(function, options: dict | None = None):
    """Return ``function`` compiled by ``torch.compile`` into fused loops, compiling on first use.

    ``options`` are inductor settings for this function only.
    """
    # NOTE: pass code limits and scales as 0-d tensors. With torch 2.14.1, a compiled function called
    # first with float limits -128 and 127 kept clipping at 127 when later called with 0 and 255.
    name = function.__name__ + repr(sorted((options or {}).items()))
    if name not in _compiled:
        # On machines without CUDA, torch warns once that it found no CUDA runtime. The CPU loops
        # compiled here do not need one, so the warning would only mislead.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # Each network compiles a handful of variants per loop (block sets, noise on or off, size-1
        # dimensions). Past the recompile limit, torch would silently run the loop uncompiled.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        _compiled[name] = torch.compile(function, dynamic=True, options=options)
    return _compiled[name]


def quantize_inputs(values: torch.Tensor, scale: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor,
                    square: torch.dtype | None, channels: list[torch.Tensor | None]) -> tuple[list, list | None, torch.Tensor]:
    """Return the DAC codes of ``values * scale`` per block set, their squares, and the saturated count.

    ``channels`` gives each set's channel gather index (None for all channels); the codes come
    back gathered and channels-last. ``square`` is the dtype of the squared codes, None for none.
    The saturated count covers each input once.
    """
    raw = torch.round(values * scale)
    saturated = ((raw < code_min) | (raw > code_max)).sum()
    codes, squares = [], []
    for index in channels:
        nhwc = values.permute(0, 2, 3, 1)
        if index is not None:
            nhwc = nhwc.index_select(3, index)
        gathered = torch.round(nhwc * scale).clamp(code_min, code_max).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        codes.append(gathered)
        squares.append(None if square is None else (gathered * gathered).to(square))
    return codes, None if square is None else squares, saturated


def full_variance(variance: torch.Tensor, column_variance: torch.Tensor | None) -> torch.Tensor:
    """Return the float32 read-noise variance of every tile output from a block set's stored form.

    ``column_variance`` None means ``variance`` is already per output; otherwise ``variance`` is the
    row power per block and ``column_variance`` each column's factor (the column-mean variance).
    """
    return variance.float() if column_variance is None else variance * column_variance


def subtract_pairs(summed: torch.Tensor) -> torch.Tensor:
    """Return ``G+ - G-`` of code sums shaped ``(..., parts, cols)``, or the single part when ``parts`` is 1."""
    if summed.shape[-2] == 2:
        return summed[..., 0, :] - summed[..., 1, :]
    return summed[..., 0, :]


def scale_outputs(values: torch.Tensor, gain: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """Return ``values * gain + bias`` in one pass (``values`` unchanged when ``gain`` is None)."""
    if gain is None:
        return values
    return values * gain if bias is None else torch.addcmul(bias, values, gain)


def digitize_codes(currents: list, variances: list, column_variances: list, keys: torch.Tensor | None,
                   code_min: torch.Tensor, code_max: torch.Tensor, gain: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Add read noise, round to codes, count and clip saturated codes, sum the tile results, subtract pairs and scale.

    Each list holds one entry per block set. ``currents`` are in ADC steps, shaped
    ``(N, H, W, groups, blocks, parts, columns)``. ``variances`` hold the noise variance of each
    current, or, where the set's ``column_variances`` entry is a tensor, the row power
    ``(N, H, W, groups, blocks, 1, 1)`` that multiplies it; None means no noise. ``keys[s]`` draws
    set ``s``'s noise. ``gain`` and ``bias``, shaped ``(groups, columns)`` or None, scale the pair
    differences of the code sums (see :func:`scale_outputs`). Returns the scaled sums,
    ``(N, H, W, groups, columns)``, and the saturated count.

    Compile it with :data:`INLINE_NOISE`. The saturated codes are counted per output first, so that
    both sums run over the blocks in one loop.
    """
    total, saturated = None, None
    for index, values in enumerate(currents):
        variance = variances[index]
        if variance is not None:
            values = values + full_variance(variance, column_variances[index]).sqrt() * counter_normal(values, keys[index])
        values = torch.round(values)
        count = ((values < code_min) | (values > code_max)).sum(dim=4, dtype=torch.int32).sum()
        summed = values.clamp(code_min, code_max).sum(dim=4)
        total = summed if total is None else total + summed
        saturated = count if saturated is None else saturated + count
    return scale_outputs(subtract_pairs(total), gain, bias), saturated
