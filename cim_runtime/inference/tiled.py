"""Compute mapped layers tile by tile, summing partial products digitally as a crossbar system does."""

from __future__ import annotations

import copy

import torch
from torch import nn

from cim_runtime.mapping import LayerSpec, MappedNetwork, Tile, lower_input, raise_output, weight_to_matrices


class TiledLayer(nn.Module):
    """A Conv2d or Linear computed from its crossbar matrices, one tile at a time.

    Each tile multiplies its block of input rows by its block of the matrix. Blocks that share output
    columns are summed, as the digital periphery of a tiled crossbar system does.
    """

    def __init__(self, spec: LayerSpec, weight: torch.Tensor, bias: torch.Tensor | None, tiles: list[Tile]):
        super().__init__()
        self.spec = spec
        self.tiles = tiles
        self.register_buffer("matrices", weight_to_matrices(spec, weight.detach()).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns, out_spatial = lower_input(self.spec, x)
        products = columns.new_zeros(columns.shape[0], self.spec.groups, self.spec.matrix_cols, columns.shape[-1])
        for tile in self.tiles:
            rows = slice(tile.row_start, tile.row_start + tile.rows)
            cols = slice(tile.col_start, tile.col_start + tile.cols)
            block = self.matrices[tile.group, rows, cols]
            products[:, tile.group, cols] += torch.einsum("nrl,rc->ncl", columns[:, tile.group, rows], block)
        return raise_output(self.spec, products, out_spatial, self.bias)


def _set_submodule(network: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, module)


def tiled_network(network: nn.Module, mapped: MappedNetwork, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Return a copy of ``network`` whose mapped layers compute tile by tile.

    Args:
        weights: effective weights per layer (from decoded conductances); the network's own if omitted.
    """
    tiled = copy.deepcopy(network)
    for spec in mapped.plan.layers:
        original = tiled.get_submodule(spec.name)
        weight = original.weight if weights is None else weights[spec.name]
        tiles = [tile for tile in mapped.plan.tiles if tile.layer == spec.name]
        _set_submodule(tiled, spec.name, TiledLayer(spec, weight.to(original.weight.dtype), original.bias, tiles))
    return tiled
