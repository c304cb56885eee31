"""The analog step of the inference job: build, calibrate and age the analog network of a programmed model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from cim_runtime.analog.calibration import calibrate, read_after_drift
from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.convert import AnalogNetwork, from_driver
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import MappedNetwork

logger = logging.getLogger(__name__)


@dataclass
class AnalogRequest:
    """Analog-mode settings of one inference run."""

    config: AnalogConfig = field(default_factory=lambda: AnalogConfig(read_noise_sigma_rel=None))
    #: Batches drawn at random (fixed seed) from the evaluated images to set the converter ranges.
    #: Only the images are used, never the labels.
    calibration_batches: int = 4
    #: Time between programming and inference, in seconds; the arrays drift meanwhile.
    time_since_programming_s: float = 0.0

    def __post_init__(self) -> None:
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches={self.calibration_batches} is invalid: must be at least 1")
        if not self.time_since_programming_s >= 0:
            raise ConfigError(f"time_since_programming_s={self.time_since_programming_s!r} is invalid: must be 0 s or above")


def calibration_batches(dataset, count: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Draw ``count`` batches of images at random without replacement (fewer if the dataset is small)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = order[: count * batch_size]
    batches = []
    for start in range(0, len(chosen), batch_size):
        batches.append(torch.stack([dataset[index][0] for index in chosen[start : start + batch_size]]))
    return batches


def prepare_analog(driver: ArrayDriver, network: nn.Module, mapped: MappedNetwork, dataset, request: AnalogRequest,
                   batch_size: int) -> AnalogNetwork:
    """Build the analog network from the programmed arrays, calibrate it, then let the arrays drift."""
    analog = from_driver(network, mapped, driver, request.config)
    calibrate(analog, calibration_batches(dataset, request.calibration_batches, batch_size))
    if request.time_since_programming_s > 0:
        read_after_drift(analog, driver, request.time_since_programming_s)
        logger.info("read the arrays again %g s after programming (drift compensation: %s)",
                    request.time_since_programming_s, analog.config.drift_compensation)
    analog.reset_saturation()
    return analog


def analog_summary(analog: AnalogNetwork, request: AnalogRequest) -> dict:
    """Settings and converter saturation of an analog run, for ``summary.json``."""
    saturation = analog.saturation()
    return {
        "config": analog.config.to_dict(),
        "calibration_batches": request.calibration_batches,
        "time_since_programming_s": request.time_since_programming_s,
        "dac_saturation": saturation["dac"],
        "adc_saturation": saturation["adc"],
        "layers": saturation["layers"],
    }
