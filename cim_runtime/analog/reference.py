"""The slow reference path: one analog layer computed through ``ArrayDriver.mvm``, tile by tile.

Every sliding window of every image becomes one row-voltage vector sent to the tile's array, and
the tile's physical columns are read from the returned currents. This is what the hardware does and
what :class:`~cim_runtime.analog.layer.AnalogLayer` reproduces with batched convolutions; tests
compare the two. It is meant for small layers only.
"""

from __future__ import annotations

import numpy as np
import torch

from cim_runtime.analog.layer import AnalogLayer
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import lower_input


def _digitize_a(layer: AnalogLayer, currents_a: np.ndarray) -> np.ndarray:
    """Quantize currents in amperes with the layer's ADC and return amperes."""
    digitized, saturated = layer.adc()(torch.from_numpy(currents_a))
    return digitized.numpy()


def forward_through_driver(layer: AnalogLayer, x: torch.Tensor, driver: ArrayDriver) -> torch.Tensor:
    """Compute ``layer`` on ``x`` with one ``driver.mvm`` call per tile (the IR-drop model is not applied)."""
    if layer.config.bit_serial:
        raise ConfigError("the driver reference path does not implement bit-serial input")
    spec = layer.spec
    info = driver.info()
    batch = x.shape[0]
    voltages = x.double() * (layer.config.read_voltage_v / float(layer.input_range))
    dac = layer.dac()
    if dac.bits is not None:
        codes, _ = dac.codes(voltages)
        voltages = codes * dac.step
    columns, out_spatial = lower_input(spec, voltages)
    windows = columns.shape[-1]
    total = np.zeros((batch, spec.groups, spec.matrix_cols, windows))

    for tile in layer.tiles:
        block = columns[:, tile.group, tile.row_start : tile.row_start + tile.rows, :]
        block = block.permute(0, 2, 1).reshape(batch * windows, tile.rows).numpy()
        row_voltages_v = np.zeros((batch * windows, info.rows))
        row_voltages_v[:, tile.array_row : tile.array_row + tile.rows] = block
        currents_a = driver.mvm(row_voltages_v, array=tile.array)
        positive_col = tile.array_col + 2 * np.arange(tile.cols)
        positive_a, negative_a = currents_a[:, positive_col], currents_a[:, positive_col + 1]
        if layer.pair_columns:
            pair_a = _digitize_a(layer, positive_a) - _digitize_a(layer, negative_a)
        else:
            pair_a = _digitize_a(layer, positive_a - negative_a)
        pair_a = pair_a.reshape(batch, windows, tile.cols).transpose(0, 2, 1)
        total[:, tile.group, tile.col_start : tile.col_start + tile.cols, :] += pair_a

    scale = layer.weight_scale * float(layer.input_range) / layer.config.read_voltage_v
    output = torch.from_numpy(total).reshape(batch, spec.weight_shape[0], *out_spatial).float()
    shape = (1, -1, *([1] * len(out_spatial)))
    output = output * (layer.output_gain * scale).view(shape)
    if layer.bias is not None:
        output = output + layer.bias.view(shape)
    return output
