"""Inference from programmed arrays: readback of conductances and tile-by-tile computation."""

from cim_runtime.inference.readback import programmed_network, read_conductances, with_weights
from cim_runtime.inference.tiled import TiledLayer, tiled_network

__all__ = ["TiledLayer", "programmed_network", "read_conductances", "tiled_network", "with_weights"]
