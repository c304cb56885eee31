"""Choice of the layers whose weights live on devices."""

from __future__ import annotations

from torch import nn

from cim_runtime.errors import ConfigError

DEVICE_LAYERS = ("all", "classifier")


def mapped_layers(network: nn.Module, selection: str) -> dict[str, nn.Module]:
    """Return the Conv2d and Linear layers of ``network`` that ``selection`` selects, by module name.

    ``all`` selects every Conv2d and Linear layer (the layers :mod:`cim_runtime.mapping` maps onto
    arrays). ``classifier`` selects the last Linear layer only, as in transfer learning where a
    pretrained feature extractor stays digital.

    Raises:
        ConfigError: ``selection`` is unknown or the network has no such layer.
    """
    if selection not in DEVICE_LAYERS:
        raise ConfigError(f"device layers {selection!r} is invalid: use one of {', '.join(DEVICE_LAYERS)}")
    layers = {name: module for name, module in network.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    if selection == "classifier":
        linear = [name for name, module in layers.items() if isinstance(module, nn.Linear)]
        layers = {linear[-1]: layers[linear[-1]]} if linear else {}
    if not layers:
        raise ConfigError(f"the network has no {'Linear' if selection == 'classifier' else 'Conv2d or Linear'} layer to put on devices")
    return layers


def classifier_name(network: nn.Module) -> str:
    """Return the module name of the last Linear layer."""
    return next(iter(mapped_layers(network, "classifier")))
