"""Every torchvision family the converter supports equals torch in ideal mode (no quantization, no noise).

Random weights, one 32 x 32 image, 128 x 128 tiles. VGG's two 4096-wide hidden Linear layers stay
digital here, because mapping them alone takes over a gigabyte of float64 conductances. The last
Linear layer and all convolutions are analog, and Linear layers of every size use the same path.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cim_runtime.analog import AnalogConfig, AnalogLayer, calibrate, convert
from cim_runtime.mapping import ConductanceWindow

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)
TILE = 128

NETWORKS = [
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101",
    "densenet121", "densenet161", "densenet169",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval()


def convert_ideal(network: nn.Module, name: str, x: torch.Tensor, tile: int = TILE, **options) -> nn.Module:
    keep_digital = ["classifier.0", "classifier.3"] if name.startswith("vgg") else []
    return convert(network, window=WINDOW, tile_rows=tile, tile_cols=tile, array_rows=tile, array_cols=tile,
                   example_input=x, keep_digital=keep_digital, **options)


@pytest.mark.parametrize("name", NETWORKS)
def test_ideal_network_equals_torch(name):
    network = build(name)
    x = torch.randn(1, 3, 32, 32)
    analog = convert_ideal(network, name, x)
    assert analog.analog_layers()
    with torch.no_grad():
        assert relative_error(analog(x), network(x)) < 1e-5


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121", "mobilenet_v3_small"])
def test_ideal_network_with_digital_batchnorm_equals_torch(name):
    network = build(name)
    x = torch.randn(2, 3, 32, 32)
    analog = convert_ideal(network, name, x, fold_batchnorm=False)
    assert any(isinstance(module, nn.BatchNorm2d) for module in analog.modules())
    with torch.no_grad():
        assert relative_error(analog(x), network(x)) < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_tiled_equals_untiled(name):
    network = build(name)
    x = torch.randn(2, 3, 32, 32)
    small = convert_ideal(network, name, x, tile=48)
    whole = convert_ideal(network, name, x, tile=4096)
    assert len(small.mapped.plan.tiles) > len(whole.mapped.plan.tiles)
    with torch.no_grad():
        assert relative_error(small(x), whole(x)) < 1e-5


def test_ideal_chain_with_calibration_equals_torch():
    network = build("mobilenet_v3_small")
    x = torch.randn(2, 3, 32, 32)
    analog = convert_ideal(network, "mobilenet_v3_small", x, config=AnalogConfig(read_voltage_v=0.2))
    calibrate(analog, [x])
    assert all(float(layer.input_range) != 1.0 for layer in analog.analog_layers())
    with torch.no_grad():
        assert relative_error(analog(x), network(x)) < 1e-5


def test_depthwise_layers_are_analog():
    network = build("mobilenet_v2")
    analog = convert_ideal(network, "mobilenet_v2", torch.randn(1, 3, 32, 32))
    depthwise = [layer for layer in analog.analog_layers() if layer.spec.groups > 1]
    assert depthwise
    assert all(isinstance(layer, AnalogLayer) for layer in depthwise)
