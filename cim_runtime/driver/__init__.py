"""The hardware boundary: the driver interface, its backends and the URL registry."""

from cim_runtime.driver.base import CAPABILITIES, ArrayDriver, ArrayInfo
from cim_runtime.driver.registry import DEFAULT_BACKEND_URL, open_driver, split_backend_url
from cim_runtime.driver.simulator import SimulatorDriver

__all__ = [
    "CAPABILITIES",
    "DEFAULT_BACKEND_URL",
    "ArrayDriver",
    "ArrayInfo",
    "SimulatorDriver",
    "open_driver",
    "split_backend_url",
]
