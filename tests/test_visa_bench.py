"""Bench files of the VISA backend: every key checked, with messages that name the value and the fix."""

from __future__ import annotations

import pytest

from cim_runtime.driver import open_driver
from cim_runtime.driver.visa_bench import bench_from_dict, load_bench
from cim_runtime.errors import ConfigError, DataError


def good() -> dict:
    return {
        "array": {"rows": 4, "cols": 4, "conductance_min_s": 2e-5, "conductance_max_s": 1.2e-4, "read_voltage_max_v": 0.3,
                  "pulse_amplitude_max_v": 3.0, "pulse_width_min_s": 1e-6, "pulse_width_max_s": 1e-2, "compliance_max_a": 1e-3},
        "smu": {"resource": "TCPIP0::127.0.0.1::5025::SOCKET", "family": "keysight-b2900"},
        "pulse": {"resource": "TCPIP0::127.0.0.1::5026::SOCKET", "family": "keysight-33500b"},
        "switch": {"resource": "TCPIP0::127.0.0.1::5027::SOCKET", "family": "keysight-34980a", "first_col_line": 5},
    }


def changed(table: str, **values) -> dict:
    raw = good()
    raw[table].update(values)
    return raw


def test_good_bench_has_defaults():
    bench = bench_from_dict(good())
    assert bench.visa.library == "@py"
    assert bench.visa.timeout_s == 5.0
    assert bench.array.default_read_voltage_v == 0.1


@pytest.mark.parametrize("raw, message", [
    (changed("array", rows=0), "rows=0 .* must be above 0"),
    (changed("array", conductance_max_s=1e-5), "conductance_max_s=1e-05 .* must be above conductance_min_s"),
    (changed("array", default_read_voltage_v=0.5), "default_read_voltage_v=0.5"),
    (changed("array", pulse_amplitude_max_v=12.0), "pulse_amplitude_max_v=12.0 .* keysight-33500b can do \\(10\\)"),
    (changed("array", read_voltage_max_v=30.0), "read_voltage_max_v=30.0 .* keysight-b2900"),
    (changed("array", pulse_width_min_s=1e-9), "shortest pulse"),
    (changed("array", rows="4"), "rows='4' .* must be an integer"),
    (changed("array", pulse_width_max_s=float("nan")), "finite number"),
    (changed("array", color="red"), "unknown key\\(s\\) color in \\[array\\]"),
    (changed("smu", family="keithley-9999"), "SMU family 'keithley-9999' is unknown: use one of keithley-2400, keysight-b2900"),
    (changed("switch", first_col_line=3), "overlap .* set first_col_line to 5"),
    (changed("switch", first_col_line=98), "lines 98 to 101"),
    (changed("switch", ground_bus=1), "must be different buses"),
    (changed("switch", ground_bus=5), "different buses from 1 to 4"),
    (changed("switch", unselected="ground", sense_bus=2), "smu_bus, pulse_bus, ground_bus, sense_bus .* got \\(1, 2, 3, 2\\)"),
    (changed("switch", unselected="bias"), "unselected='bias'"),
    (changed("switch", unselected="ground") | {"smu": {"resource": "TCPIP0::127.0.0.1::5025::SOCKET",
                                                       "family": "keysight-b2900", "sense_channel": 1}}, "sense_channel=1"),
    (changed("switch", slot=9), "slot=9 .* slots 1 to 8"),
    (changed("smu", channel=3), "channel=3 .* channels 1 to 2"),
    (changed("pulse", resource="TCPIP::127.0.0.1::5025::SOCKET"), "\\[smu\\] and \\[pulse\\] .* name the same resource"),
    (good() | {"visa": {"timeout_s": 1e30}}, "timeout_s=1e\\+30 .* between 0.001 and 3600"),
    (good() | {"visa": {"timeout_s": 1e-4}}, "timeout_s=0.0001"),
    ({**good(), "switch": {"resource": "TCPIP0::127.0.0.1::5027::SOCKET", "family": "keysight-34980a"}}, "lacks first_col_line"),
    (changed("switch", resource="matrix"), "resource='matrix' in \\[switch\\] of bench is not a VISA resource name"),
    ({**good(), "extra": {}}, "unknown table\\(s\\) extra"),
    ({key: value for key, value in good().items() if key != "pulse"}, "lacks its \\[pulse\\] table"),
    (changed("smu", resource=None) | {"smu": {"family": "keysight-b2900"}}, "\\[smu\\] of bench lacks resource"),
])
def test_bad_bench_is_rejected(raw, message):
    with pytest.raises(ConfigError, match=message):
        bench_from_dict(raw)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="cannot read bench file"):
        load_bench(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[array\nrows = 4")
    with pytest.raises(DataError, match="not valid TOML"):
        load_bench(broken)


@pytest.mark.parametrize("url, message", [
    ("visa://", "names no bench file"),
    ("visa://?bench=b.toml&speed=9", "unknown option\\(s\\) speed"),
])
def test_bad_urls(url, message):
    with pytest.raises(ConfigError, match=message):
        open_driver(url)


def test_reads_beyond_compliance_warn(caplog):
    bench_from_dict(changed("array", compliance_max_a=1e-6))
    assert "above compliance_max_a" in caplog.text
