"""``cim-run infer --mode analog``: a real run on the bundled photos, and option errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from cim_runtime.zoo import DEFAULT_SAMPLE_DIR


def cim_run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cim_runtime.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def sample_with_two_classes(tmp_path: Path) -> Path:
    root = tmp_path / "two_classes"
    for folder in ("1", "2"):
        shutil.copytree(DEFAULT_SAMPLE_DIR / folder, root / folder)
    return root


def test_analog_run_reports_converters(tmp_path):
    result = cim_run("infer", "--data-root", str(sample_with_two_classes(tmp_path)), "--mode", "analog", "--dac-bits", "8",
                     "--adc-bits", "8", "--calibration-batches", "1", "--batch-size", "8", "--output", str(tmp_path / "out"),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "DAC 8 bit, ADC 8 bit" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "analog"
    assert summary["analog"]["config"]["adc_bits"] == 8
    assert summary["analog"]["config"]["read_noise_sigma_rel"] == 0.002
    assert summary["analog"]["adc_saturation"]["conversions"] > 0
    assert summary["programmed_accuracy"] >= summary["digital_accuracy"] - 0.2


def test_readback_run_has_no_analog_section(tmp_path):
    result = cim_run("infer", "--data-root", str(sample_with_two_classes(tmp_path)), "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "readback"
    assert "analog" not in summary


def test_analog_options_need_analog_mode(tmp_path):
    result = cim_run("infer", "--adc-bits", "8", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "--adc-bits applies to --mode analog only" in result.stderr
    for option in (["--compile"], ["--pair-subtraction", "digital"], ["--ir-drop", "exact"], ["--calibration-batches", "2"],
                   ["--read-noise-variance", "column-mean"]):
        result = cim_run("infer", *option, "--output", str(tmp_path / "out"), "--no-progress")
        assert result.returncode == 2
        assert f"{option[0]} applies to --mode analog only" in result.stderr


def test_bit_serial_needs_dac_bits(tmp_path):
    result = cim_run("infer", "--mode", "analog", "--bit-serial", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "--bit-serial needs --dac-bits N" in result.stderr


def test_impossible_numbers_name_the_option(tmp_path):
    for option, value in (("--read-noise", "-0.1"), ("--wire-resistance-ohm", "inf"), ("--calibration-batches", "0")):
        result = cim_run("infer", "--mode", "analog", option, value, "--output", str(tmp_path / "out"), "--no-progress")
        assert result.returncode == 2
        assert f"{option} {float(value) if option != '--calibration-batches' else value} is invalid" in result.stderr


def test_fold_batchnorm_and_keep_digital(tmp_path):
    result = cim_run("infer", "--data-root", str(sample_with_two_classes(tmp_path)), "--mode", "analog", "--dac-bits", "8",
                     "--adc-bits", "8", "--fold-batchnorm", "--keep-digital", "classifier", "--keep-digital", "features.conv0",
                     "--read-noise-variance", "column-mean", "--calibration-batches", "1", "--batch-size", "8", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["analog"]["digital_layers"] == ["features.conv0", "classifier"]
    assert len(summary["analog"]["folded_batchnorm"]) > 0
    assert {"features.conv0", "classifier"}.isdisjoint(row["layer"] for row in summary["layers"])
    assert "folded into convolutions" in result.stdout
    assert summary["analog"]["config"]["read_noise_variance"] == "column-mean"
    assert "(column-mean variance)" in result.stdout
    assert summary["programmed_accuracy"] >= summary["digital_accuracy"] - 0.2


def test_keep_digital_errors_name_the_pattern(tmp_path):
    result = cim_run("infer", "--mode", "analog", "--keep-digital", "no_such_layer", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "'no_such_layer' matches no Conv2d or Linear layer" in result.stderr
    result = cim_run("infer", "--mode", "analog", "--keep-digital", "*", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "keeps every layer digital" in result.stderr
    result = cim_run("infer", "--keep-digital", "classifier", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "--keep-digital applies to --mode analog only" in result.stderr


def test_analog_from_programmed_state(tmp_path):
    state = tmp_path / "programmed"
    result = cim_run("program", "--output", str(state), "--no-progress")
    assert result.returncode == 0, result.stderr
    data = str(sample_with_two_classes(tmp_path))
    result = cim_run("infer", "--programmed", str(state), "--data-root", data, "--mode", "analog", "--dac-bits", "8", "--adc-bits", "8",
                     "--calibration-batches", "1", "--batch-size", "8", "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "analog"
    assert summary["analog"]["config"]["read_noise_sigma_rel"] == 0.0
    assert summary["analog"]["adc_saturation"]["conversions"] > 0
    assert summary["programmed_accuracy"] >= summary["digital_accuracy"] - 0.2
    result = cim_run("infer", "--programmed", str(state), "--data-root", data, "--mode", "analog", "--time-since-programming-s", "60",
                     "--output", str(tmp_path / "drift"), "--no-progress")
    assert result.returncode == 2
    assert "do not apply with --programmed" in result.stderr


def test_compile_without_converters_warns(caplog):
    from cim_runtime.cli import build_parser
    from cim_runtime.cli_analog import compiled_label, request_from_args

    args = build_parser().parse_args(["infer", "--mode", "analog", "--compile", "--adc-bits", "8"])
    request = request_from_args(args)
    assert "not compiled" in caplog.text
    assert compiled_label(request.config.to_dict()) == ", compiled (ADC)"
    plain = request_from_args(build_parser().parse_args(["infer", "--mode", "analog"]))
    assert compiled_label(plain.config.to_dict()) == ""
