"""Map a whole network: lower every Conv2d and Linear, encode the weights and plan the tiles."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cim_runtime.errors import ConfigError
from cim_runtime.mapping.encoding import ConductanceWindow, decode_pair, encode_pair, weight_scale
from cim_runtime.mapping.lowering import mappable_layers, matrices_to_weight, spec_for, weight_to_matrices
from cim_runtime.mapping.tiling import CellTargets, TilePlan, cell_targets, plan_tiles


@dataclass
class MappedNetwork:
    """A network's tile plan with the target conductances and weight scale of every layer."""

    plan: TilePlan
    window: ConductanceWindow
    #: Weight per siemens of differential conductance, per layer.
    scales: dict[str, float]
    #: Target (G+, G-) in siemens per layer, each of shape (groups, matrix_rows, matrix_cols).
    target_pairs: dict[str, tuple[np.ndarray, np.ndarray]]

    def targets(self) -> CellTargets:
        """Address and target conductance of every used cell."""
        return cell_targets(self.plan, self.target_pairs)

    def decode_weights(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Turn per-layer conductance pairs into float32 weight tensors of the original shapes."""
        weights = {}
        for spec in self.plan.layers:
            positive, negative = pairs[spec.name]
            if np.isnan(positive).any() or np.isnan(negative).any():
                raise ConfigError(f"layer {spec.name!r} has cells with no conductance; the tile plan does not cover it")
            matrices = torch.from_numpy(decode_pair(positive, negative, self.scales[spec.name]))
            weights[spec.name] = matrices_to_weight(spec, matrices).float()
        return weights


def map_network(
    network: nn.Module,
    window: ConductanceWindow,
    *,
    tile_rows: int,
    tile_cols: int,
    array_rows: int,
    array_cols: int,
    spare_pairs: int = 0,
    layer_names: Collection[str] | None = None,
) -> MappedNetwork:
    """Lower, encode and tile every Conv2d and Linear layer of ``network``.

    Args:
        window: conductance range targets may use, normally the backend's window.
        tile_rows, tile_cols: largest tile in physical cells; ``tile_cols`` must be even.
        array_rows, array_cols: size of one physical array.
        spare_pairs: column pairs kept free on every array for moving columns with stuck cells.
        layer_names: map only these layers (the others stay digital); every mappable layer if None.
    """
    layers = mappable_layers(network)
    if layer_names is not None:
        unknown = sorted(set(layer_names) - {name for name, _ in layers})
        if unknown:
            raise ConfigError(f"layers {unknown} are not Conv2d or Linear layers of the network and cannot be mapped")
        layers = [(name, module) for name, module in layers if name in layer_names]
    if not layers:
        raise ConfigError("the network has no Conv2d or Linear layer to map")
    specs, scales, pairs = [], {}, {}
    for name, module in layers:
        spec = spec_for(name, module)
        matrices = weight_to_matrices(spec, module.weight.detach().double()).numpy()
        scales[name] = weight_scale(matrices, window)
        pairs[name] = encode_pair(matrices, scales[name], window)
        specs.append(spec)
    plan = plan_tiles(specs, tile_rows, tile_cols, array_rows, array_cols, spare_pairs)
    return MappedNetwork(plan, window, scales, pairs)
