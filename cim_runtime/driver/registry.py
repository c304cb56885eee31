"""Open a backend by URL: ``sim://?profile=C4D1&seed=0`` (the default), ``serial://…``, ``socket://…`` or ``visa://?bench=PATH``."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from cim_runtime.driver.base import ArrayDriver
from cim_runtime.errors import ConfigError

#: The URL every command uses when no backend is named.
DEFAULT_BACKEND_URL = "sim://"


def _int_option(options: dict[str, str], name: str, url: str) -> int | None:
    if name not in options:
        return None
    try:
        return int(options[name])
    except ValueError:
        raise ConfigError(f"{name}={options[name]!r} in {url!r} is not an integer") from None


def _open_simulator(url: str, options: dict[str, str]) -> ArrayDriver:
    from cim_runtime.driver.simulator import SimulatorDriver

    allowed = {"profile", "rows", "cols", "arrays", "seed", "state"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {url!r}: sim:// takes {', '.join(sorted(allowed))}")
    kwargs = {name: value for name in ("rows", "cols", "arrays", "seed") if (value := _int_option(options, name, url)) is not None}
    kwargs.update({name: options[name] for name in ("profile", "state") if name in options})
    return SimulatorDriver(**kwargs)


def _open_serial(url: str, options: dict[str, str]) -> ArrayDriver:
    from cim_runtime.driver.serial import open_serial

    return open_serial(url, options)


def _open_visa(url: str, options: dict[str, str]) -> ArrayDriver:
    from cim_runtime.driver.visa import open_visa

    return open_visa(url, options)


#: URL scheme to opener.
OPENERS: dict[str, Callable[[str, dict[str, str]], ArrayDriver]] = {
    "sim": _open_simulator, "serial": _open_serial, "socket": _open_serial, "spy": _open_serial, "visa": _open_visa,
}


def split_backend_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a backend URL into its scheme and query options; repeated options are errors."""
    parts = urlsplit(url)
    if not parts.scheme:
        raise ConfigError(f"backend URL {url!r} has no scheme: use e.g. {DEFAULT_BACKEND_URL!r}")
    if parts.scheme == "sim" and (parts.netloc or parts.path not in ("", "/") or parts.fragment):
        raise ConfigError(f"backend URL {url!r} is invalid: sim:// takes options only, as in 'sim://?profile=C4D1&seed=0'")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise ConfigError(f"backend URL {url!r} repeats an option")
    return parts.scheme, options


def open_driver(url: str = DEFAULT_BACKEND_URL) -> ArrayDriver:
    """Open the backend that ``url`` names.

    Raises:
        ConfigError: the scheme is unknown or an option is invalid.
    """
    scheme, options = split_backend_url(url)
    if scheme not in OPENERS:
        raise ConfigError(f"unknown backend scheme {scheme!r} in {url!r}: use one of {', '.join(s + '://' for s in OPENERS)}")
    return OPENERS[scheme](url, options)
