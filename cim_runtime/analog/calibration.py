"""Per-layer converter calibration on a few batches, and drift compensation after programming.

Calibration runs in two passes over the same batches. The first pass records each layer's inputs
with ideal converters and fixes the DAC input range (the calibration percentile of ``|x|``) and
whether the DAC needs negative voltages. The second pass runs with the calibrated DACs and ideal
ADCs, records each tile's column currents and fixes the ADC range at twice their percentile
(signed) or once (unsigned). After calibration the ranges stay fixed, and conversions outside them
saturate and are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from cim_runtime.analog.convert import AnalogNetwork
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError

logger = logging.getLogger(__name__)


def _images(batch) -> torch.Tensor:
    """Accept a tensor or an ``(images, labels)`` pair from a data loader."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(analog: AnalogNetwork, batches: Iterable) -> None:
    """Fix every layer's DAC and ADC ranges from ``batches`` and record the drift reference read.

    Raises:
        ConfigError: ``batches`` is empty.
    """
    batches = [_images(batch) for batch in batches]
    if not batches:
        raise ConfigError("calibration needs at least one input batch")
    device = next(analog.buffers()).device
    layers = analog.analog_layers()
    analog.eval()
    with torch.no_grad():
        for stage in ("input", "adc"):
            for layer in layers:
                layer.calibrating = stage
                layer.prepare()
            try:
                for images in batches:
                    analog(images.to(device))
            finally:
                for layer in layers:
                    layer.calibrating = None
            for layer in layers:
                if stage == "input":
                    layer.finish_input_calibration()
                else:
                    layer.finish_adc_calibration()
    for layer in layers:
        layer.prepare()
        layer.record_drift_reference()
        layer.output_gain.fill_(1.0)
    analog.reset_saturation()
    analog.seed(analog.config.seed)
    logger.info("calibrated %d analog layers on %d batches", len(layers), len(batches))


def read_after_drift(analog: AnalogNetwork, driver: ArrayDriver, time_since_programming_s: float, mode: str | None = None) -> None:
    """Let ``time_since_programming_s`` pass on the arrays, read them again and compensate drift.

    Args:
        mode: ``none``, ``global`` or ``column``; the analog config's ``drift_compensation`` if None.
    """
    if time_since_programming_s < 0:
        raise ConfigError(f"time_since_programming_s={time_since_programming_s!r} is invalid: must be 0 or above")
    if time_since_programming_s > 0:
        driver.wait_s(time_since_programming_s)
    analog.read_conductances(driver)
    analog.compensate_drift(mode)
