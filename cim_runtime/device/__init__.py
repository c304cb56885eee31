"""Device physics for the simulator: response curves, pulse law, variability, presets and device files."""

from cim_runtime.device.cells import CellPopulation
from cim_runtime.device.config import (
    RESPONSE_KINDS,
    DeviceConfig,
    PulseLaw,
    ResponseConfig,
    VariationConfig,
    device_config_from_dict,
    load_device_config,
    save_device_config,
)
from cim_runtime.device.presets import MEASURED_PRESETS, PulseTable, load_measured_preset
from cim_runtime.device.profiles import DEFAULT_PROFILE, PROFILE_NAMES, make_profile, table_config

__all__ = [
    "DEFAULT_PROFILE",
    "MEASURED_PRESETS",
    "PROFILE_NAMES",
    "RESPONSE_KINDS",
    "CellPopulation",
    "DeviceConfig",
    "PulseLaw",
    "PulseTable",
    "ResponseConfig",
    "VariationConfig",
    "device_config_from_dict",
    "load_device_config",
    "load_measured_preset",
    "make_profile",
    "save_device_config",
    "table_config",
]
