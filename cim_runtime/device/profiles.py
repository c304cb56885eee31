"""Device profiles by name: the measured presets, an ideal device, and device files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cim_runtime.device.config import DeviceConfig, ResponseConfig, VariationConfig, load_device_config
from cim_runtime.device.presets import MEASURED_PRESETS, PulseTable, linear_table, load_measured_preset
from cim_runtime.errors import ConfigError

#: The profile used when none is named.
DEFAULT_PROFILE = "C4D1"
#: Every built-in profile name.
PROFILE_NAMES = (*MEASURED_PRESETS, "ideal")


def table_config(table: PulseTable) -> DeviceConfig:
    """Wrap a measured pulse table as a table-driven device with the default variability."""
    values = np.concatenate([table.potentiation_s, table.depression_s])
    response = ResponseConfig(
        kind="table", conductance_min_s=float(values.min()), conductance_max_s=float(values.max()),
        potentiation_s=tuple(float(v) for v in table.potentiation_s),
        depression_s=tuple(float(v) for v in table.depression_s),
    )
    return DeviceConfig(name=table.name, response=response)


def make_profile(name: str) -> DeviceConfig:
    """Return the device for a preset name, ``ideal``, or the path of a device TOML file.

    Raises:
        ConfigError: the name is neither a preset nor an existing file.
    """
    if name in MEASURED_PRESETS:
        return table_config(load_measured_preset(name))
    if name == "ideal":
        return table_config(linear_table()).without_variation()
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"device file {name!r} not found")
        return load_device_config(path)
    raise ConfigError(f"unknown device profile {name!r}: use one of {', '.join(PROFILE_NAMES)} or the path of a device .toml file")


__all__ = ["DEFAULT_PROFILE", "PROFILE_NAMES", "VariationConfig", "make_profile", "table_config"]
