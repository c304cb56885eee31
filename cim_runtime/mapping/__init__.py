"""Mapping: layers to crossbar matrices, weights to conductance pairs, matrices to placed tiles."""

from cim_runtime.mapping.encoding import ConductanceWindow, decode_pair, encode_pair, weight_scale
from cim_runtime.mapping.lowering import (
    LayerSpec,
    lower_input,
    lowered_forward,
    mappable_layers,
    matrices_to_weight,
    raise_output,
    spec_for,
    weight_to_matrices,
)
from cim_runtime.mapping.network import MappedNetwork, map_network
from cim_runtime.mapping.tiling import (
    CellTargets,
    Chunk,
    Tile,
    TilePlan,
    array_chunks,
    cell_targets,
    cells_to_pairs,
    check_tile_size,
    gather_pairs,
    plan_tiles,
)

__all__ = [
    "CellTargets",
    "Chunk",
    "ConductanceWindow",
    "LayerSpec",
    "MappedNetwork",
    "Tile",
    "TilePlan",
    "array_chunks",
    "cell_targets",
    "cells_to_pairs",
    "check_tile_size",
    "decode_pair",
    "encode_pair",
    "gather_pairs",
    "lower_input",
    "lowered_forward",
    "map_network",
    "mappable_layers",
    "matrices_to_weight",
    "plan_tiles",
    "raise_output",
    "spec_for",
    "weight_scale",
    "weight_to_matrices",
]
