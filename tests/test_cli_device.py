"""The device commands: characterize, fit and device show, through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import assert_one_line_error, cim_run

PRESETS = Path(__file__).resolve().parents[1] / "cim_runtime" / "device" / "presets"


def test_characterize_fit_and_use_the_device(tmp_path):
    run = cim_run("characterize", "--backend", "sim://?arrays=2&rows=16&cols=16", "--routines", "pulse-train,rps",
                  "--cells", "8", "--output", str(tmp_path / "char"), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "char" / "pulse_train.png").is_file()
    summary = json.loads((tmp_path / "char" / "characterization.json").read_text())
    assert summary["routines"]["rps"]["set_threshold_v"] == pytest.approx(0.55)

    fit = cim_run("fit", str(tmp_path / "char" / "pulse_train.csv"), "--output", str(tmp_path / "fit"))
    assert fit.returncode == 0, fit.stderr
    assert "simulated" in fit.stdout
    report = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert report["ramps"] == {"up": 24, "down": 24}

    show = cim_run("device", "show", str(tmp_path / "fit" / "device.toml"), "--output", str(tmp_path / "show"))
    assert show.returncode == 0, show.stderr
    info = cim_run("info", "--device-profile", str(tmp_path / "fit" / "device.toml"))
    assert info.returncode == 0, info.stderr


def test_fit_kim_table_prints_nonlinearity(tmp_path):
    result = cim_run("fit", str(PRESETS / "Non_spikes_2_potentiation.txt"), str(PRESETS / "Non_spikes_2_depression.txt"),
                     "--output", str(tmp_path / "fit"))
    assert result.returncode == 0, result.stderr
    assert "nonlinearity up -0.7" in result.stdout
    assert "not measurable from one ramp" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["characterize", "--cells", "0"], "--cells: 0 is invalid"),
        (["characterize", "--routines", "pulse-train,"], "empty name"),
        (["characterize", "--pulses", "0"], "--pulses: 0 is invalid"),
        (["characterize", "--routines", "pulse-train,magic"], "unknown routine"),
        (["fit", "absent_set.csv"], "not found"),
        (["fit", str(PRESETS / "C4D1_potentiation.txt")], "need both"),
        (["fit", str(PRESETS / "C4D1_potentiation.txt"), str(PRESETS / "C4D1_depression.txt"), "--map-to-s", "2", "1"], "MIN < MAX"),
        (["fit", str(PRESETS / "C4D1_potentiation.txt"), str(PRESETS / "C4D1_depression.txt"), "--max-nrmse", "0"], "--max-nrmse 0"),
        (["device", "show", "C9D9"], "unknown device profile"),
        (["device", "show", "missing.toml"], "not found"),
    ],
)
def test_device_command_bad_input(tmp_path, arguments, fragment):
    result = cim_run(*arguments, "--output", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)


def test_device_command_output_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("keep me")
    result = cim_run("device", "show", "C4D1", "--output", str(tmp_path / "taken"))
    assert_one_line_error(result, "is a file")
