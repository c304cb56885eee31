"""The analog step of the inference job: build, calibrate and age the analog network of a programmed model."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from cim_runtime.analog.calibration import calibrate, read_after_drift
from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.convert import AnalogNetwork, analog_layer_names, fold_batch_norms, from_driver
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import MappedNetwork, mappable_layers

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
    #: Fold each batch norm that directly follows a convolution into it before mapping.
    fold_batchnorm: bool = False
    #: Glob patterns of Conv2d and Linear layer names that are not mapped and stay digital.
    keep_digital: tuple[str, ...] = ()

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


@dataclass
class NetworkToMap:
    """The network that an inference run maps and programs, and what was changed to get it."""

    network: nn.Module
    #: (convolution, batch norm) names of the folded pairs.
    folded: list[tuple[str, str]]
    #: Layers to map; None maps every Conv2d and Linear layer.
    layer_names: list[str] | None


def network_to_map(network: nn.Module, request: AnalogRequest | None, dataset) -> NetworkToMap:
    """Apply the request's batch-norm folding and digital layers to ``network`` (readback mode: no change).

    Raises:
        ConfigError: a ``keep_digital`` pattern matches no layer, every layer is kept digital, or
            folding changed the network's output on the first image of ``dataset``.
    """
    if request is None:
        return NetworkToMap(network, [], None)
    folded: list[tuple[str, str]] = []
    if request.fold_batchnorm:
        network, folded = fold_batch_norms(network, dataset[0][0].unsqueeze(0))
    names = analog_layer_names(network, request.keep_digital) if request.keep_digital else None
    if names == []:
        raise ConfigError(f"--keep-digital {' '.join(request.keep_digital)} keeps every layer digital; "
                          "leave at least one Conv2d or Linear layer analog")
    return NetworkToMap(network, folded, names)


def digital_layer_names(network: nn.Module, mapped: MappedNetwork) -> list[str]:
    """Names of the Conv2d and Linear layers that stay digital torch modules."""
    analog = {spec.name for spec in mapped.plan.layers}
    return [name for name, _ in mappable_layers(network) if name not in analog]


def prepare_analog(driver: ArrayDriver, network: nn.Module, mapped: MappedNetwork, dataset, request: AnalogRequest,
                   batch_size: int, folded: list[tuple[str, str]] = ()) -> AnalogNetwork:
    """Build the analog network from the programmed arrays, calibrate it, then let the arrays drift.

    ``network`` is the network that was mapped (batch norm already folded where asked).
    """
    analog = from_driver(network, mapped, driver, request.config, folded)
    calibrate(analog, calibration_batches(dataset, request.calibration_batches, batch_size))
    if request.time_since_programming_s > 0:
        profile = getattr(driver, "profile", None)
        if profile is not None and profile.variation.drift_nu_mean == 0 and profile.variation.drift_nu_sigma_dtod == 0:
            logger.warning("the simulated device does not drift (drift_nu_mean and drift_nu_sigma_dtod are 0, as in every "
                           "built-in profile), so --time-since-programming-s %g changes nothing; pass a device file with "
                           "drift_nu_mean above 0 to --device-profile to study drift", request.time_since_programming_s)
        read_after_drift(analog, driver, request.time_since_programming_s)
        logger.info("read the arrays again %g s after programming (drift compensation: %s)",
                    request.time_since_programming_s, analog.config.drift_compensation)
    analog.reset_saturation()
    return analog


def analog_from_saved_pairs(network: nn.Module, mapped: MappedNetwork, pairs: dict, dataset, request: AnalogRequest,
                            batch_size: int) -> AnalogNetwork:
    """Build and calibrate the analog network of a saved programmed state, from its measured conductances.

    The measured conductances already carry the noise of the read that measured them, so read noise
    per MVM is 0 unless ``request.config`` sets it.

    Raises:
        ConfigError: the request sets drift, folding or digital layers, which need the arrays or a new mapping.
    """
    if request.time_since_programming_s > 0 or request.config.drift_compensation != "none":
        raise ConfigError("--time-since-programming-s and --drift-compensation need the arrays to drift and be read again, "
                          "so they do not apply with --programmed; run cim-run infer --mode analog on the backend instead")
    if request.fold_batchnorm or request.keep_digital:
        raise ConfigError("--fold-batchnorm and --keep-digital change what is mapped, and a saved state contains every layer "
                          "as cim-run program mapped it; run cim-run infer --mode analog without --programmed instead")
    config = request.config
    if config.read_noise_sigma_rel is None:
        config = AnalogConfig.from_dict({**config.to_dict(), "read_noise_sigma_rel": 0.0})
    analog = AnalogNetwork(copy.deepcopy(network).eval(), mapped, pairs, config, [])
    calibrate(analog, calibration_batches(dataset, request.calibration_batches, batch_size))
    analog.reset_saturation()
    return analog


def analog_summary(analog: AnalogNetwork, request: AnalogRequest, accuracy: dict, conductances_from: str) -> dict:
    """Settings, accuracy and converter saturation of an analog run, for ``summary.json``.

    Args:
        accuracy: the accuracies of the run; its ``programmed_accuracy`` is the analog network's.
        conductances_from: ``backend`` (read from the arrays) or ``saved state``.
    """
    saturation = analog.saturation()
    return {
        "accuracy": accuracy["programmed_accuracy"],
        "conductances_from": conductances_from,
        "config": analog.config.to_dict(),
        "calibration_batches": request.calibration_batches,
        "time_since_programming_s": request.time_since_programming_s,
        "folded_batchnorm": [list(pair) for pair in analog.folded],
        "digital_layers": digital_layer_names(analog.network, analog.mapped),
        "dac_saturation": saturation["dac"],
        "adc_saturation": saturation["adc"],
        "layers": saturation["layers"],
    }
