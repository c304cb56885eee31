"""Mapping equals torch: lowering, differential encoding, tiling and placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cim_runtime.errors import ConfigError
from cim_runtime.inference import tiled_network
from cim_runtime.mapping import (
    ConductanceWindow,
    TilePlan,
    decode_pair,
    encode_pair,
    lowered_forward,
    map_network,
    spec_for,
    weight_scale,
    weight_to_matrices,
)

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)

CONV_CASES = {
    "3x3 pad 1": dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    "1x1": dict(in_channels=8, out_channels=16, kernel_size=1),
    "7x7 stride 2": dict(in_channels=3, out_channels=12, kernel_size=7, stride=2, padding=3),
    "non-square kernel and stride": dict(in_channels=6, out_channels=10, kernel_size=(2, 5), stride=(3, 1), padding=(1, 2)),
    "dilation": dict(in_channels=6, out_channels=10, kernel_size=3, dilation=(2, 3), padding=2),
    "groups": dict(in_channels=8, out_channels=12, kernel_size=3, groups=4, padding=1),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, padding=1, stride=2),
    "same asymmetric": dict(in_channels=4, out_channels=6, kernel_size=(4, 2), padding="same", dilation=(1, 3)),
    "valid": dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid"),
    "reflect": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
    "circular": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=(1, 2), padding_mode="circular"),
    "replicate no bias": dict(in_channels=4, out_channels=6, kernel_size=5, padding=1, padding_mode="replicate", bias=False),
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).detach().norm() / expected.detach().norm())


def map_and_decode(network: nn.Module, tile_rows: int, tile_cols: int, array: int = 64):
    mapped = map_network(network, WINDOW, tile_rows=tile_rows, tile_cols=tile_cols, array_rows=array, array_cols=array)
    return mapped, mapped.decode_weights(mapped.target_pairs)


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_lowered_conv_equals_torch(case):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONV_CASES[case])
    x = torch.randn(3, conv.in_channels, 13, 11)
    spec = spec_for("conv", conv)
    actual = lowered_forward(spec, x, weight_to_matrices(spec, conv.weight), conv.bias)
    assert actual.shape == conv(x).shape
    assert relative_error(actual, conv(x)) < 1e-5


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
@pytest.mark.parametrize("tile", [(5, 4), (16, 10), (64, 64)], ids=["5x4", "16x10", "whole"])
def test_tiled_conv_from_conductances_equals_torch(case, tile):
    torch.manual_seed(1)
    network = nn.Sequential(nn.Conv2d(**CONV_CASES[case]))
    mapped, weights = map_and_decode(network, *tile)
    x = torch.randn(2, network[0].in_channels, 12, 14)
    expected = network(x)
    tiled = tiled_network(network, mapped, weights)(x)
    assert relative_error(tiled, expected) < 1e-5


@pytest.mark.parametrize("case", ["non-square kernel and stride", "groups", "same asymmetric"])
def test_tiled_equals_untiled(case):
    torch.manual_seed(2)
    network = nn.Sequential(nn.Conv2d(**CONV_CASES[case]))
    x = torch.randn(2, network[0].in_channels, 10, 9)
    _, untiled_weights = map_and_decode(network, 64, 64)
    small, small_weights = map_and_decode(network, 3, 2)
    whole, _ = map_and_decode(network, 64, 64)
    untiled = tiled_network(network, whole, untiled_weights)(x)
    tiled = tiled_network(network, small, small_weights)(x)
    assert len(small.plan.tiles) > len(whole.plan.tiles)
    assert relative_error(tiled, untiled) < 1e-6


def test_linear_tiled_equals_torch():
    torch.manual_seed(3)
    network = nn.Sequential(nn.Linear(300, 70))
    mapped, weights = map_and_decode(network, 32, 16)
    x = torch.randn(5, 300)
    assert relative_error(tiled_network(network, mapped, weights)(x), network(x)) < 1e-5


@pytest.mark.parametrize(
    "builder",
    [
        lambda: torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10),
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    ],
    ids=["densenet", "resnet18", "mobilenet-v3"],
)
def test_whole_network_tiled_equals_torch(builder):
    torch.manual_seed(4)
    network = builder().eval()
    mapped, weights = map_and_decode(network, 128, 128, array=128)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(tiled_network(network, mapped, weights)(x), network(x)) < 1e-5


def test_encoding_round_trip_and_window():
    weights = np.random.default_rng(0).normal(size=(2, 30, 20))
    scale = weight_scale(weights, WINDOW)
    positive, negative = encode_pair(weights, scale, WINDOW)
    for conductance in (positive, negative):
        assert conductance.min() >= WINDOW.conductance_min_s
        assert conductance.max() <= WINDOW.conductance_max_s * (1 + 1e-12)
    assert np.allclose(decode_pair(positive, negative, scale), weights, rtol=1e-12, atol=1e-12)


def test_zero_layer_maps_to_window_minimum():
    network = nn.Sequential(nn.Linear(4, 3))
    nn.init.zeros_(network[0].weight)
    mapped, weights = map_and_decode(network, 8, 8)
    positive, negative = mapped.target_pairs["0"]
    assert np.all(positive == WINDOW.conductance_min_s)
    assert np.all(negative == WINDOW.conductance_min_s)
    assert torch.count_nonzero(weights["0"]) == 0


def test_tiles_stay_inside_arrays_without_overlap():
    torch.manual_seed(5)
    network = nn.Sequential(nn.Conv2d(16, 40, 3), nn.Conv2d(40, 30, 1), nn.Linear(30, 50))
    mapped = map_network(network, WINDOW, tile_rows=48, tile_cols=24, array_rows=64, array_cols=64)
    used = np.zeros((mapped.plan.arrays_used, 64, 64), dtype=int)
    for tile in mapped.plan.tiles:
        assert tile.array_row + tile.rows <= 64
        assert tile.array_col + 2 * tile.cols <= 64
        used[tile.array, tile.array_row : tile.array_row + tile.rows, tile.array_col : tile.array_col + 2 * tile.cols] += 1
    assert used.max() == 1
    assert used.sum() == mapped.plan.cells_used
    targets = mapped.targets()
    assert len(targets) == mapped.plan.cells_used
    assert len({(a, r, c) for a, r, c in zip(targets.array, targets.row, targets.col)}) == len(targets)


def test_plan_json_round_trip():
    network = nn.Sequential(nn.Conv2d(3, 8, (3, 2), stride=(2, 1), padding=1), nn.Linear(8, 4))
    mapped = map_network(network, WINDOW, tile_rows=16, tile_cols=8, array_rows=32, array_cols=32)
    restored = TilePlan.from_json(mapped.plan.to_json())
    assert restored == mapped.plan


@pytest.mark.parametrize(("tile", "fragment"), [((300, 64), "does not fit"), ((64, 7), "even"), ((0, 8), "at least 1 row")])
def test_impossible_tile_is_rejected(tile, fragment):
    with pytest.raises(ConfigError, match=fragment):
        map_network(nn.Sequential(nn.Linear(4, 4)), WINDOW, tile_rows=tile[0], tile_cols=tile[1], array_rows=256, array_cols=256)


def test_unmappable_network_is_rejected():
    with pytest.raises(ConfigError, match="no Conv2d or Linear"):
        map_network(nn.Sequential(nn.ReLU()), WINDOW, tile_rows=8, tile_cols=8, array_rows=8, array_cols=8)
