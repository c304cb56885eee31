"""Convert a torch classification network into an analog network computed by crossbar tiles.

Any network whose matrix products are ``nn.Conv2d`` and ``nn.Linear`` modules converts (torchvision's
VGG, ResNet, DenseNet and MobileNet families among them). Batch norm either stays a digital layer
or is folded into the weights and bias of the convolution that feeds it. Layers named in
``keep_digital`` (glob patterns such as ``features.0`` or ``*.fc``) stay digital torch modules.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.converters import SaturationCounter
from cim_runtime.analog.layer import AnalogLayer
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import ConductanceWindow, MappedNetwork, gather_pairs, map_network, mappable_layers

logger = logging.getLogger(__name__)

#: Largest relative change of the network output that batch-norm folding may cause (float32 rounding).
FOLD_TOLERANCE = 1e-4


def set_submodule(network: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, module)


def conv_batchnorm_pairs(network: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """Find each (Conv2d, BatchNorm2d) pair where the batch norm's input is the convolution's output.

    Runs ``network`` once on ``example_input`` with hooks. A module that runs more than once per
    forward pass, or a convolution whose output feeds several batch norms, is left out.
    """
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    found: list[tuple[str, str]] = []
    hooks = []

    def after_conv(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (name, output)
        return hook

    def before_norm(name):
        def hook(module, inputs):
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                found.append((source[0], name))
        return hook

    for name, module in network.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_norm(name)))
    try:
        with torch.no_grad():
            network(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    conv_uses = [conv for conv, _ in found]
    return [(conv, norm) for conv, norm in found if calls[conv] == 1 and calls[norm] == 1 and conv_uses.count(conv) == 1]


def fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the convolution before it, in place."""
    with torch.no_grad():
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps) if norm.affine else 1 / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.mul_(gain.view(-1, 1, 1, 1))
        folded_bias = (bias - norm.running_mean) * gain + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(folded_bias.clone())
        else:
            conv.bias.copy_(folded_bias)


def relative_change(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-30))


def fold_batch_norms(network: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Return an eval-mode copy of ``network`` with every foldable batch norm folded, and the pairs folded.

    Raises:
        ConfigError: folding changed the output of ``example_input`` by more than :data:`FOLD_TOLERANCE`,
            which means a convolution output has another user; keep batch norm digital instead.
    """
    folded = copy.deepcopy(network).eval()
    pairs = conv_batchnorm_pairs(folded, example_input)
    for conv_name, norm_name in pairs:
        fold_pair(folded.get_submodule(conv_name), folded.get_submodule(norm_name))
        set_submodule(folded, norm_name, nn.Identity())
    with torch.no_grad():
        change = relative_change(folded(example_input), network.eval()(example_input))
    if change > FOLD_TOLERANCE:
        raise ConfigError(f"folding batch norm changed the network output by {change:.2e} (relative); "
                          "convert with fold_batchnorm=False to keep batch norm digital")
    logger.info("folded %d batch-norm layers into convolutions", len(pairs))
    return folded, pairs


def analog_layer_names(network: nn.Module, keep_digital: Iterable[str]) -> list[str]:
    """Return the Conv2d and Linear layers to map, without those matching a ``keep_digital`` pattern.

    Raises:
        ConfigError: a pattern matches no layer, which is most often a typing error.
    """
    names = [name for name, _ in mappable_layers(network)]
    patterns = list(keep_digital)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(f"keep_digital pattern {pattern!r} matches no Conv2d or Linear layer; layer names look like {names[:3]}")
    return [name for name in names if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


class AnalogNetwork(nn.Module):
    """A network whose mapped layers are :class:`AnalogLayer` modules; everything else stays torch.

    Attributes:
        network: the converted network (a copy; the original is left unchanged).
        mapped: tile plan, conductance window and weight scales.
        folded: (convolution, batch norm) names of the folded pairs.
    """

    def __init__(self, network: nn.Module, mapped: MappedNetwork, pairs: dict[str, tuple[np.ndarray, np.ndarray]],
                 config: AnalogConfig, folded: list[tuple[str, str]]):
        super().__init__()
        self.network = network
        self.mapped = mapped
        self.config = config
        self.folded = list(folded)
        for spec in mapped.plan.layers:
            original = network.get_submodule(spec.name)
            tiles = [tile for tile in mapped.plan.tiles if tile.layer == spec.name]
            positive, negative = pairs[spec.name]
            layer = AnalogLayer(spec, tiles, positive, negative, mapped.scales[spec.name], original.bias, config,
                                mapped.window.conductance_min_s)
            set_submodule(network, spec.name, layer)
        self.seed(config.seed)
        for layer in self.analog_layers():
            layer.record_drift_reference()
        if config.read_noise_variance != "exact" and config.read_noise == 0:
            logger.warning("read_noise_variance=%r changes nothing because the read noise is 0; set read_noise_sigma_rel "
                           "(--read-noise) above 0 to draw read noise", config.read_noise_variance)

    def analog_layers(self) -> list[AnalogLayer]:
        return [module for module in self.network.modules() if isinstance(module, AnalogLayer)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def seed(self, seed: int) -> None:
        """Restart the read-noise generator, so the same inputs give the same outputs."""
        device = next(self.network.buffers()).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))
        for layer in self.analog_layers():
            layer.noise_generator = self.generator

    def to(self, *args, **kwargs) -> "AnalogNetwork":
        """Move the network and restart the read-noise generator from ``config.seed`` on the new device."""
        super().to(*args, **kwargs)
        self.seed(self.config.seed)
        return self

    def set_conductances(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Load new measured (G+, G-) per layer; calibration and drift reference are kept."""
        for layer in self.analog_layers():
            layer.set_conductances(*pairs[layer.spec.name])

    def read_conductances(self, driver: ArrayDriver) -> None:
        """Read the programmed arrays again (for example long after programming)."""
        self.set_conductances(measured_pairs(driver, self.mapped))

    def compensate_drift(self, mode: str | None = None) -> None:
        """Set each layer's output gain from a reference read; ``mode`` defaults to the config's."""
        mode = self.config.drift_compensation if mode is None else mode
        for layer in self.analog_layers():
            layer.compensate_drift(mode)

    def saturation(self) -> dict:
        """Converter use since the last reset: per layer and in total, for the DAC and the ADC."""
        totals = {"dac": SaturationCounter(), "adc": SaturationCounter()}
        layers = {}
        for layer in self.analog_layers():
            layers[layer.spec.name] = {"dac": layer.dac_saturation.to_dict(), "adc": layer.adc_saturation.to_dict()}
            totals["dac"].add(layer.dac_saturation.conversions, layer.dac_saturation.saturated)
            totals["adc"].add(layer.adc_saturation.conversions, layer.adc_saturation.saturated)
        return {"dac": totals["dac"].to_dict(), "adc": totals["adc"].to_dict(), "layers": layers}

    def reset_saturation(self) -> None:
        for layer in self.analog_layers():
            layer.dac_saturation.reset()
            layer.adc_saturation.reset()


def measured_pairs(driver: ArrayDriver, mapped: MappedNetwork) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return per-layer (G+, G-) as the arrays store them now, in siemens.

    The simulator returns its noiseless conductances, because the analog layers draw read noise per
    MVM. Other backends are read once with ``read_array``, read noise included.
    """
    read = getattr(driver, "true_conductance_s", None) or driver.read_array
    return gather_pairs(mapped.plan, {array: read(array) for array in range(mapped.plan.arrays_used)})


def convert(
    network: nn.Module,
    *,
    window: ConductanceWindow,
    tile_rows: int,
    tile_cols: int,
    array_rows: int,
    array_cols: int,
    config: AnalogConfig = AnalogConfig(),
    fold_batchnorm: bool = True,
    keep_digital: Iterable[str] = (),
    example_input: torch.Tensor | None = None,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> AnalogNetwork:
    """Convert ``network`` in one call: fold batch norm, map the layers and build the analog network.

    Args:
        window: conductance window of the arrays.
        tile_rows, tile_cols, array_rows, array_cols: tile and array size in physical cells.
        config: the analog signal chain.
        fold_batchnorm: fold each batch norm that directly follows a convolution into it.
        keep_digital: glob patterns of Conv2d or Linear layer names that stay digital.
        example_input: one input batch for the folding check; a 1x3x64x64 random image if None.
        pairs: measured (G+, G-) per layer; the mapping targets (perfect programming) if None.
    """
    network = copy.deepcopy(network).eval()
    layer_names = analog_layer_names(network, keep_digital)
    folded: list[tuple[str, str]] = []
    if fold_batchnorm and any(isinstance(module, nn.BatchNorm2d) for module in network.modules()):
        sample = torch.randn(1, 3, 64, 64) if example_input is None else example_input
        network, folded = fold_batch_norms(network, sample)
    mapped = map_network(network, window, tile_rows=tile_rows, tile_cols=tile_cols, array_rows=array_rows, array_cols=array_cols,
                         layer_names=layer_names)
    return AnalogNetwork(network, mapped, mapped.target_pairs if pairs is None else pairs, config, folded)



def from_driver(network: nn.Module, mapped: MappedNetwork, driver: ArrayDriver, config: AnalogConfig = AnalogConfig(),
                folded: list[tuple[str, str]] = ()) -> AnalogNetwork:
    """Build the analog network of a programmed ``mapped`` network from the conductances the driver holds.

    ``network`` must be the network that was mapped (after any batch-norm folding). With
    ``config.read_noise_sigma_rel`` None, a simulator's own read noise is used.
    """
    if config.read_noise_sigma_rel is None:
        profile = getattr(driver, "profile", None)
        sigma = profile.variation.read_sigma_rel if profile is not None else 0.0
        config = AnalogConfig.from_dict({**config.to_dict(), "read_noise_sigma_rel": sigma})
    return AnalogNetwork(copy.deepcopy(network).eval(), mapped, measured_pairs(driver, mapped), config, list(folded))
