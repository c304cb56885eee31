"""The exception hierarchy of cim-runtime.

Every error raised on purpose by this package derives from :class:`CimError`, so a caller can catch
one type. Messages name the value at fault and what to do about it.
"""

from __future__ import annotations


class CimError(Exception):
    """Base class of every error raised by cim-runtime."""


class ConfigError(CimError, ValueError):
    """A setting or argument is invalid: unknown profile, impossible tile size, bad URL option."""


class LimitError(ConfigError):
    """A request lies outside a hardware limit (voltage, pulse width, compliance, address).

    It is raised before anything reaches the array; cim-runtime never clips a request into range.
    """

    @classmethod
    def out_of_range(cls, name: str, value: float, low: float, high: float, where: str) -> "LimitError":
        """Build the error for a value outside ``[low, high]`` on the instrument ``where``."""
        return cls(f"{name}={value:g} is invalid: must be between {low:g} and {high:g} inclusive ({where})")


class DataError(CimError):
    """An input file or folder is missing, unreadable or inconsistent with the model."""


class TransportError(CimError, OSError):
    """The link to the hardware failed: port missing, connection lost, write failed."""


class DeviceTimeoutError(TransportError, TimeoutError):
    """The hardware did not reply before the deadline."""


class ProtocolError(CimError):
    """A reply broke the wire protocol: bad framing, CRC mismatch, unexpected sequence number."""


class DeviceReportedError(CimError):
    """The board or instrument reported an error code."""

    def __init__(self, code: int, text: str):
        super().__init__(f"device error {code}: {text}")
        self.code = code
        self.text = text

    def __reduce__(self):
        return (type(self), (self.code, self.text))


class VerifyFailedError(CimError):
    """Write-verify left cells outside their tolerance band and the caller asked for strict mode."""


#: The fix for a programming run whose saved files are damaged or missing.
RESTART_HINT = "this run cannot be resumed; program again into another --output folder, or delete the folder first"
