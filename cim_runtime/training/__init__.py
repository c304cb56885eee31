"""Device-aware training: pulse-update training through the device model, and noise-aware training."""

from cim_runtime.training.layers import DEVICE_LAYERS, mapped_layers
from cim_runtime.training.noise import NoiseInjector, WeightNoise
from cim_runtime.training.pulse_update import PULSE_SCHEMES, ROUNDINGS, DevicePairs, PulseSettings, PulseUpdater

__all__ = ["DEVICE_LAYERS", "PULSE_SCHEMES", "ROUNDINGS", "DevicePairs", "NoiseInjector", "PulseSettings",
           "PulseUpdater", "WeightNoise", "mapped_layers"]
