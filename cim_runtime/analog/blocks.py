"""Row blocks of a layer's tiles, laid out as grouped convolutions.

The tiles cut each group's weight matrix into row blocks. Every row block is one convolution group:
it reads the input channels its rows come from (its channel span) and produces its own partial
column currents, which the ADC digitizes separately. All groups of one grouped convolution must
read the same number of channels, so a block set gathers blocks of similar span: the full-height
blocks in one set and a shorter last block in a second one. A 64-channel 3 x 3 layer on 256-row
tiles has blocks of 256, 256 and 64 rows. In one set, all three would read 29 channels, 1.36 times
the layer's 64. In two sets, the convolutions read 29, 29 and 8 channels, 1.03 times as many.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cim_runtime.errors import ConfigError
from cim_runtime.mapping import LayerSpec, Tile


def row_blocks(spec: LayerSpec, tiles: list[Tile]) -> list[tuple[int, int]]:
    """Return the (row_start, rows) blocks the tiles cut each group's matrix into, in row order."""
    blocks = sorted({(tile.row_start, tile.rows) for tile in tiles})
    covered = 0
    for row_start, rows in blocks:
        if row_start != covered:
            raise ConfigError(f"the tiles of layer {spec.name!r} do not cover matrix rows {covered} to {row_start - 1}")
        covered = row_start + rows
    if covered != spec.matrix_rows:
        raise ConfigError(f"the tiles of layer {spec.name!r} cover {covered} of its {spec.matrix_rows} matrix rows")
    return blocks


@dataclass(frozen=True)
class BlockSet:
    """Row blocks computed by one grouped convolution."""

    #: Positions of the blocks in the layer's block list.
    indices: tuple[int, ...]
    #: ``(row_start, rows)`` of each block.
    blocks: tuple[tuple[int, int], ...]
    #: First input channel of each block.
    firsts: tuple[int, ...]
    #: Input channels every block of the set reads (the widest span).
    span: int


def block_sets(blocks: list[tuple[int, int]], per_channel: int) -> list[BlockSet]:
    """Split a layer's row blocks into at most two sets: the full-height blocks and the shorter ones."""
    tallest = max(rows for _, rows in blocks)
    chosen = [[i for i, (_, rows) in enumerate(blocks) if rows == tallest],
              [i for i, (_, rows) in enumerate(blocks) if rows < tallest]]
    sets = []
    for indices in (group for group in chosen if group):
        members = [blocks[i] for i in indices]
        firsts = [row_start // per_channel for row_start, _ in members]
        span = max((row_start + rows - 1) // per_channel - first + 1 for (row_start, rows), first in zip(members, firsts))
        # NOTE: spans are not padded. Padding to multiples of 16 channels slowed the float32 grouped
        # convolutions of ResNet-18 by 9 % on an AVX-512 CPU and left the bfloat16 ones as fast.
        sets.append(BlockSet(tuple(indices), tuple(members), tuple(firsts), span))
    return sets


def set_kernel(matrices: torch.Tensor, block_set: BlockSet, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Lay out ``(groups, parts, matrix_rows, columns)`` matrices as the grouped-convolution kernel of ``block_set``.

    Convolution group ``(g, b)`` reads the input channels of block ``b`` of group ``g``. It produces
    ``parts * columns`` outputs, and its kernel entries of rows outside the block are zero. Returns
    a float32 channels-last kernel.
    """
    groups, parts, _, columns = matrices.shape
    kernel_h, kernel_w = kernel_size
    per_channel = kernel_h * kernel_w
    span = block_set.span
    kernel = matrices.new_zeros(groups, len(block_set.blocks), parts, columns, span * per_channel)
    for index, ((row_start, rows), first) in enumerate(zip(block_set.blocks, block_set.firsts)):
        offset = row_start - first * per_channel
        kernel[:, index, :, :, offset : offset + rows] = matrices[:, :, row_start : row_start + rows].transpose(-1, -2)
    return kernel.reshape(-1, span, kernel_h, kernel_w).float().contiguous(memory_format=torch.channels_last)


def block_means(matrices: torch.Tensor, block_set: BlockSet) -> torch.Tensor:
    """Return the mean over each block's rows of ``(groups, parts, matrix_rows, columns)`` matrices.

    The result has the shape ``(groups, blocks, parts, columns)`` of the set's tile outputs.
    """
    means = [matrices[:, :, row_start : row_start + rows].mean(dim=2) for row_start, rows in block_set.blocks]
    return torch.stack(means, dim=1).float()


def channel_index(block_set: BlockSet, groups: int, channels_per_group: int, device) -> torch.Tensor | None:
    """Input channels gathered for the set's grouped convolution; None when it is the identity."""
    index = []
    for group in range(groups):
        for first in block_set.firsts:
            # Channels past the group's end carry zero kernel weights; any valid channel will do.
            local = np.minimum(first + np.arange(block_set.span), channels_per_group - 1)
            index.append(group * channels_per_group + local)
    index = np.concatenate(index)
    if index.size == groups * channels_per_group and np.array_equal(index, np.arange(index.size)):
        return None
    return torch.from_numpy(index).to(device)
