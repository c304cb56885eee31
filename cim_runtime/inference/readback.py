"""Readback inference: read programmed conductances once and run the network with them."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cim_runtime.driver import ArrayDriver
from cim_runtime.mapping import MappedNetwork, gather_pairs


def read_conductances(driver: ArrayDriver, mapped: MappedNetwork, *, progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every array the plan uses and return per-layer measured (G+, G-) in siemens."""
    maps = {}
    for array in tqdm(range(mapped.plan.arrays_used), desc="read back", unit="array", disable=not progress):
        maps[array] = driver.read_array(array)
    return gather_pairs(mapped.plan, maps)


def with_weights(network: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Return a copy of ``network`` whose named layers carry the given weights."""
    programmed = copy.deepcopy(network)
    with torch.no_grad():
        for name, weight in weights.items():
            layer = programmed.get_submodule(name)
            layer.weight.copy_(weight.to(layer.weight.dtype))
    return programmed


def programmed_network(driver: ArrayDriver, network: nn.Module, mapped: MappedNetwork, *, progress: bool = True) -> tuple[nn.Module, dict]:
    """Read the arrays back and return the network rebuilt from what they hold, with the raw pairs."""
    pairs = read_conductances(driver, mapped, progress=progress)
    return with_weights(network, mapped.decode_weights(pairs)), pairs
