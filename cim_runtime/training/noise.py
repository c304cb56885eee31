"""Noise-aware training: digital training whose forward pass uses weights as a programmed array stores them.

For inference on a programmed array, each weight becomes a G+/G- pair programmed by write-verify
(:mod:`cim_runtime.programming`). Its error has two parts that this module injects into every training
forward pass:

* quantization: a device crosses its window in a finite number of pulses (``levels``), so one cell
  holds ``|w|`` only in steps of ``w_max / levels``;
* noise: write-verify leaves a cell anywhere in its tolerance band (uniform, so sigma =
  ``tolerance_rel / sqrt(3)`` of the window), and every read adds ``read_sigma_rel`` of the
  conductance, taken here at the top of the window as the worst case. A weight has two cells, so its
  sigma is ``sqrt(2)`` times the cell sigma, in units of ``w_max``.

Gradients pass straight through the quantization and noise to the clean weights, which the optimizer
updates digitally. ``w_max`` is the layer's largest weight magnitude at that step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from cim_runtime.device.config import DeviceConfig
from cim_runtime.errors import ConfigError
from cim_runtime.programming import WriteVerifyConfig
from cim_runtime.training.torch_response import build_torch_curve


@dataclass(frozen=True)
class WeightNoise:
    """Quantization levels and Gaussian noise of a programmed weight."""

    #: Conductance steps of one device across its window; 0 turns quantization off.
    levels: int
    #: Standard deviation of a weight's error, relative to the layer's largest weight magnitude.
    sigma_rel: float

    def __post_init__(self) -> None:
        if self.levels < 0:
            raise ConfigError(f"levels={self.levels} is invalid: must be at least 0")
        if not (math.isfinite(self.sigma_rel) and self.sigma_rel >= 0):
            raise ConfigError(f"sigma_rel={self.sigma_rel} is invalid: must be a finite value of at least 0")

    @classmethod
    def from_device(cls, device: DeviceConfig, tolerance_rel: float = WriteVerifyConfig.tolerance_rel) -> "WeightNoise":
        """Derive levels and noise from a device model and a write-verify tolerance (fraction of the window)."""
        pulses_up, pulses_down = build_torch_curve(device.response).pulses_across()
        levels = max(1, round(min(pulses_up, pulses_down)))
        response = device.response
        read_sigma = device.variation.read_sigma_rel * response.conductance_max_s / response.window_s
        cell_sigma = math.hypot(tolerance_rel / math.sqrt(3.0), read_sigma)
        return cls(levels=levels, sigma_rel=math.sqrt(2.0) * cell_sigma)

    def perturb(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return ``weight`` quantized and with noise drawn from ``generator``."""
        largest = float(weight.abs().max()) if weight.numel() else 0.0
        if not math.isfinite(largest) or largest == 0.0:
            return weight.clone()
        noisy = weight
        if self.levels:
            step = largest / self.levels
            noisy = torch.round(weight / step) * step
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float32).to(weight.device, weight.dtype)
        return noisy + self.sigma_rel * largest * draw


class NoiseInjector:
    """Swaps noisy weights into the selected layers for one forward and backward pass."""

    def __init__(self, layers: dict[str, torch.nn.Module], noise: WeightNoise, seed: int):
        self.layers = layers
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    @contextlib.contextmanager
    def perturbed(self):
        """Hold perturbed weights inside the block and restore the clean ones when it ends.

        Run the forward pass and ``backward()`` inside the block and the optimizer step after it: the
        gradient taken at the perturbed weights then updates the clean weights (straight-through).
        """
        clean = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                clean[name] = layer.weight.detach().clone()
                layer.weight.copy_(self.noise.perturb(clean[name], self.generator))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, layer in self.layers.items():
                    layer.weight.copy_(clean[name])
