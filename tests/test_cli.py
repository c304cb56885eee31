"""The cim-run command: bad input exits with status 2 and one line; a real run reports both accuracies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cim_runtime.zoo import DEFAULT_MODEL_DIR, DEFAULT_SAMPLE_DIR


def cim_run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cim_runtime.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def sample_with_one_class(tmp_path: Path) -> Path:
    root = tmp_path / "one_class"
    shutil.copytree(DEFAULT_SAMPLE_DIR / "1", root / "1")
    return root


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cim-run: error:")
    assert fragment in lines[0]


def test_missing_model_folder(tmp_path):
    result = cim_run("infer", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), "--no-progress")
    assert_one_line_error(result, "model recipe not found")
    assert not (tmp_path / "out").exists()


def test_corrupt_weights(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / "weights.pt").write_bytes(b"not a checkpoint")
    result = cim_run("infer", "--model", str(model), "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, "cannot be loaded")


def test_missing_data_folder(tmp_path):
    result = cim_run("infer", "--data-root", str(tmp_path / "absent"), "--no-progress")
    assert_one_line_error(result, "data folder not found")


def test_classes_that_do_not_match_the_model(tmp_path):
    (tmp_path / "data" / "sunflower_x").mkdir(parents=True)
    shutil.copy(next((DEFAULT_SAMPLE_DIR / "1").glob("*.jpg")), tmp_path / "data" / "sunflower_x" / "a.jpg")
    result = cim_run("infer", "--data-root", str(tmp_path / "data"), "--no-progress")
    assert_one_line_error(result, "sunflower_x")


def test_unreadable_image_leaves_no_output(tmp_path):
    data = sample_with_one_class(tmp_path)
    (data / "1" / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff")
    result = cim_run("infer", "--data-root", str(data), "--output", str(tmp_path / "out"), "--no-progress")
    assert_one_line_error(result, "zz_truncated.jpg")
    assert not (tmp_path / "out").exists()


def test_unknown_device_profile(tmp_path):
    result = cim_run("infer", "--device-profile", "C9D9", "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, "unknown device profile 'C9D9'")


@pytest.mark.parametrize(("tile", "fragment"), [("512x512", "does not fit"), ("64x63", "even")])
def test_impossible_tile(tmp_path, tile, fragment):
    result = cim_run("infer", "--tile", tile, "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, fragment)


def test_malformed_tile_is_a_usage_error(tmp_path):
    result = cim_run("infer", "--tile", "big")
    assert result.returncode == 2
    assert "ROWSxCOLS" in result.stderr


def test_profile_option_conflicts_with_url(tmp_path):
    result = cim_run("infer", "--backend", "sim://?profile=C1D1", "--device-profile", "C4D1", "--no-progress")
    assert_one_line_error(result, "conflicts")


def test_info_prints_limits():
    result = cim_run("info", "--device-profile", "Non_spikes_2")
    assert result.returncode == 0, result.stderr
    assert "sim:Non_spikes_2" in result.stdout
    assert "compliance" in result.stdout


def test_end_to_end_on_real_photos(tmp_path, flowers_subset):
    output = tmp_path / "results"
    result = cim_run("infer", "--data-root", str(flowers_subset), "--tile", "128x128", "--seed", "5",
                     "--output", str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["images"] == 32
    assert summary["programming"]["fraction_in_tolerance"] == 1.0
    assert summary["mapping"]["tile_rows"] == 128
    assert f"digital {100 * summary['digital_accuracy']:.2f} %" in result.stdout
    assert f"readback {100 * summary['programmed_accuracy']:.2f} %" in result.stdout
    assert summary["prediction_agreement"] >= 0.8
    layers = summary["layers"]
    assert len(layers) == summary["mapping"]["layers"]
    assert sum(layer["cells"] for layer in layers) == summary["mapping"]["cells"]
    assert all(layer["fraction_in_tolerance"] == 1.0 for layer in layers)
    assert (output / "conductance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weights_of_another_network(tmp_path):
    import torch

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    torch.save({"fc.weight": torch.zeros(3, 3)}, model / "weights.pt")
    result = cim_run("infer", "--model", str(model), "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, "do not fit recipe")


def test_usage_errors_are_one_line():
    for arguments in (["infer", "--tile", "abc"], ["infer", "--batch-size", "0"], ["infer", "--seed", "1.5"]):
        result = cim_run(*arguments)
        assert_one_line_error(result, "--help")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--seed", "-1"], "seed=-1"),
        (["--tolerance", "0.7"], "--tolerance 0.7"),
        (["--backend", "sim://localhost/?arrays=2"], "takes options only"),
        (["--backend", "sim://?cols=255"], "odd number"),
    ],
)
def test_impossible_settings(tmp_path, arguments, fragment):
    result = cim_run("infer", *arguments, "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, fragment)


def test_output_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("keep me")
    result = cim_run("infer", "--output", str(tmp_path / "taken"), "--no-progress")
    assert_one_line_error(result, "is a file")
    assert (tmp_path / "taken").read_text() == "keep me"


def test_output_file_blocked_by_folder_writes_nothing(tmp_path):
    (tmp_path / "out" / "conductance.png").mkdir(parents=True)
    result = cim_run("infer", "--output", str(tmp_path / "out"), "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, "is a folder")
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [("input_size_px", 0, "input_size_px=0"), ("input_size_px", "abc", "input_size_px='abc'"),
     ("normalize_std", [0, 0, 0], "normalize_std"), ("normalize_mean", [0.5], "three numbers")],
)
def test_invalid_recipe_field(tmp_path, field, value, fragment):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    recipe = json.loads((model / "recipe.json").read_text())
    recipe[field] = value
    (model / "recipe.json").write_text(json.dumps(recipe))
    result = cim_run("infer", "--model", str(model), "--data-root", str(sample_with_one_class(tmp_path)), "--no-progress")
    assert_one_line_error(result, fragment)


def test_recipe_that_is_not_an_object(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / "recipe.json").write_text("[1, 2]")
    result = cim_run("infer", "--model", str(model), "--no-progress")
    assert_one_line_error(result, "expected a JSON object")


def test_decompression_bomb_is_rejected(tmp_path):
    from PIL import Image

    data = sample_with_one_class(tmp_path)
    Image.new("1", (15000, 15000)).save(data / "1" / "huge.png")
    (data / "1" / "huge.png").rename(data / "1" / "huge.jpg")
    result = cim_run("infer", "--data-root", str(data), "--no-progress")
    assert_one_line_error(result, "huge.jpg")


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    result = cim_run("infer", "--data-root", str(tmp_path / "photo.jpg"), "--no-progress")
    assert_one_line_error(result, "is a file")


def test_scheme_option_reaches_write_verify(tmp_path):
    result = cim_run("infer", "--scheme", "adaptive", "--data-root", str(sample_with_one_class(tmp_path)),
                     "--output", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["write_verify_config"]["scheme"] == "adaptive"
    assert summary["programming"]["fraction_in_tolerance"] == 1.0


def test_rerun_keeps_earlier_results(tmp_path):
    output = tmp_path / "out"
    data = sample_with_one_class(tmp_path)
    assert cim_run("infer", "--data-root", str(data), "--output", str(output), "--no-progress").returncode == 0
    first = (output / "summary.json").read_text()
    result = cim_run("infer", "--data-root", str(data), "--seed", "3", "--output", str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "kept as summary.previous.json, conductance.previous.png" in result.stderr
    assert (output / "summary.previous.json").read_text() == first
    assert (output / "conductance.previous.png").is_file()
