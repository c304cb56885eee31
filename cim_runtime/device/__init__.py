"""Device physics for the simulator: measured pulse tables, the pulse law, variation and noise."""

from cim_runtime.device.model import DeviceProfile, PulseLaw, TableDeviceModel, make_profile
from cim_runtime.device.presets import MEASURED_PRESETS, PulseTable, load_measured_preset

#: Every profile name that :func:`make_profile` accepts.
PROFILE_NAMES = (*MEASURED_PRESETS, "ideal")
#: The profile used when none is named.
DEFAULT_PROFILE = "C4D1"

__all__ = [
    "DEFAULT_PROFILE",
    "MEASURED_PRESETS",
    "PROFILE_NAMES",
    "DeviceProfile",
    "PulseLaw",
    "PulseTable",
    "TableDeviceModel",
    "load_measured_preset",
    "make_profile",
]
