"""Block sets of the analog convolutions, and the column-mean read-noise variance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cim_runtime.analog import AnalogConfig, AnalogLayer, calibrate, convert
from cim_runtime.analog.blocks import block_sets
from cim_runtime.analog.fused import full_variance
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import ConductanceWindow

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)


def test_short_block_gets_its_own_set():
    # A 64-channel 3 x 3 layer on 256-row tiles: blocks of 256, 256 and 64 rows.
    sets = block_sets([(0, 256), (256, 256), (512, 64)], per_channel=9)
    assert [block_set.indices for block_set in sets] == [(0, 1), (2,)]
    assert [block_set.firsts for block_set in sets] == [(0, 28), (56,)]
    # The two full blocks read 29 channels each. The short one reads channels 56 to 63.
    assert [block_set.span for block_set in sets] == [29, 8]


def test_equal_blocks_share_one_set():
    sets = block_sets([(0, 128), (128, 128)], per_channel=1)
    assert len(sets) == 1
    assert sets[0].span == 128


def convert_conv(config: AnalogConfig, tile: int = 32) -> nn.Module:
    """An 8-to-12-channel 3 x 3 convolution: 72 rows, on 32-row tiles blocks of 32, 32 and 8 rows in two sets."""
    torch.manual_seed(1)
    network = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1)).eval()
    return convert(network, window=WINDOW, tile_rows=tile, tile_cols=tile, array_rows=128, array_cols=128, config=config)


def test_tiled_in_two_sets_equals_untiled():
    x = torch.randn(3, 8, 6, 6)
    tiled, whole = convert_conv(AnalogConfig(), 32), convert_conv(AnalogConfig(), 128)
    assert len(tiled.analog_layers()[0].block_sets) == 2
    assert len(whole.analog_layers()[0].block_sets) == 1
    with torch.no_grad():
        expected = whole(x)
        assert float((tiled(x) - expected).norm() / expected.norm()) < 1e-6


def variances(layer: AnalogLayer, x: torch.Tensor) -> torch.Tensor:
    """Read-noise variance of every tile output of ``layer``, whichever way the config computes it."""
    return torch.cat([full_variance(entry.variance, entry.column_variance).flatten() for entry in layer.tile_currents(x)])


def test_column_mean_is_exact_on_uniform_columns():
    x = torch.rand(2, 8, 6, 6)
    layers = {}
    for mode in ("exact", "column-mean"):
        layer = convert_conv(AnalogConfig(read_noise_sigma_rel=0.05, read_noise_variance=mode)).analog_layers()[0]
        # Every cell of a weight column gets the column's first conductance.
        layer.set_conductances(layer.positive_s[:, :1].expand_as(layer.positive_s).clone(),
                               layer.negative_s[:, :1].expand_as(layer.negative_s).clone())
        layers[mode] = layer
    with torch.no_grad():
        exact, column_mean = variances(layers["exact"], x), variances(layers["column-mean"], x)
    # Both run in bfloat16, which rounds squared inputs, weights and sums by up to 0.4 % each.
    assert float(((column_mean - exact).abs() / exact.clamp(min=1e-30)).max()) < 0.02


@pytest.mark.parametrize(("compile_", "pairs"), [(False, "analog"), (True, "analog"), (False, "digital")],
                         ids=["eager", "compiled", "digital pair subtraction"])
def test_column_mean_spread_is_close_to_exact(compile_, pairs):
    batch = torch.randn(1, 8, 6, 6).expand(300, -1, -1, -1).contiguous()
    spread = {}
    for mode, compiled in (("exact", False), ("column-mean", compile_)):
        analog = convert_conv(AnalogConfig(dac_bits=8, adc_bits=14, read_noise_sigma_rel=0.05, read_noise_variance=mode,
                                           pair_subtraction=pairs, compile=compiled, seed=4))
        calibrate(analog, [batch])
        with torch.no_grad():
            spread[mode] = float(analog(batch).std(dim=0).mean())
    assert spread["exact"] > 0
    assert 0.9 < spread["column-mean"] / spread["exact"] < 1.1


def test_unknown_variance_mode_is_rejected():
    with pytest.raises(ConfigError, match="read_noise_variance='cells' is invalid"):
        AnalogConfig(read_noise_variance="cells")


def test_column_mean_without_read_noise_warns(caplog):
    with caplog.at_level("WARNING", logger="cim_runtime.analog.convert"):
        convert_conv(AnalogConfig(read_noise_sigma_rel=0.0, read_noise_variance="column-mean"))
    assert "changes nothing because the read noise is 0" in caplog.text
